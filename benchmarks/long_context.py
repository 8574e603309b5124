"""`python -m benchmarks.long_context A B ...`: decode steps over long prompts, source trees side
by side (each run a fresh subprocess in its tree, alternated A B A B ...; medians with ranges).

Every request's prompt is N tokens (a fixed paragraph repeated, so nothing is downloaded), the
prefill step is left out, and the figure is CPU milliseconds per decode step
(`time.process_time`): 1 stream and 8 streams thoughts off, and 8 thinking streams. Keep one
torch thread (the default) for CPU time to mean work: with more, it also counts the thread
pool's spinning between parallel regions.
Over long prompts the attention, not the weights, sets the step time at several rows.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from benchmarks.compare_trees import median_table, run_alternated, tree_parser

PROBE = r"""
import json, sys, time
import torch
sys.path.insert(0, ".")
from server.engine import Engine, EngineConfig, SamplingParams, ThoughtParams

dtype, threads, prompt_tokens, tokens = sys.argv[1], *map(int, sys.argv[2:])
torch.set_num_threads(threads)
engine = Engine(EngineConfig(model="default", dtype=dtype, max_num_seqs=8,
                             max_model_len=prompt_tokens + 4 * tokens))
paragraph = ("The farmer counted the eggs every morning, wrote the number in a small book, "
             "and sold what the family did not need at the market on Saturdays. ")
ids = engine.tokenizer.encode(paragraph * (prompt_tokens // 20 + 1))[:prompt_tokens]
names = iter(range(10**6))

def ms_per_step(streams, max_tokens, thoughts=False):
    params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True,
                            thoughts=ThoughtParams(enabled=thoughts))
    for _ in range(streams):
        engine.add_request(f"r{next(names)}", ids, params)
    engine.step()  # the prefill
    start, steps = time.process_time(), 0
    while engine.has_unfinished():
        engine.step()
        steps += 1
    return (time.process_time() - start) / steps * 1e3

ms_per_step(1, 4)  # warm-up
print(json.dumps({
    "1 stream, ms/step": ms_per_step(1, tokens),
    "8 streams, ms/step": ms_per_step(8, tokens),
    "8 thinking streams, ms/step": ms_per_step(8, max(1, tokens // 8), True),
}))
"""


def main(argv: list[str] | None = None) -> int:
    p = tree_parser("python -m benchmarks.long_context", __doc__, "runs/bench/long_context.json")
    p.add_argument("--prompt-tokens", type=int, default=1000, help="tokens in every prompt")
    p.add_argument("--tokens", type=int, default=32, help="visible tokens per stream, thoughts off")
    a = p.parse_args(argv)
    runs = run_alternated(
        a.trees, PROBE, [a.dtype, a.threads, a.prompt_tokens, a.tokens], a.repeats
    )
    title = f"{a.prompt_tokens}-token prompts ({a.dtype}, {a.threads} threads)"
    print("\n" + median_table(title, a.trees, runs))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"args": vars(a), "runs": runs}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
