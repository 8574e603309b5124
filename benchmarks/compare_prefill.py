"""`python -m benchmarks.compare_prefill A B ...`: time to first token of N simultaneous requests,
in-process, for several source trees side by side (e.g. before and after batched prefill).

N requests with different prompts are added at once and the engine's first step is timed: it
admits them all, prefills them and samples each one's first visible token (thoughts off), so its
duration is every request's TTFT without HTTP. Each tree runs in a fresh subprocess per repeat,
alternated A B A B ..., and reports the median over steps of the process's CPU time (one torch
thread by default) and of the wall time; the summary gives each tree's median and its ratio to
the first tree's.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from benchmarks.compare_trees import run_alternated, tree_parser

PROBE = r"""
import json, statistics, sys, time
import torch
sys.path.insert(0, ".")
import quietstar
from server.engine import Engine, EngineConfig, SamplingParams

dtype, threads, n, steps = sys.argv[1], *map(int, sys.argv[2:])
torch.set_num_threads(threads)
model = quietstar.load("default", getattr(torch, dtype), "cpu")
engine = Engine(EngineConfig(model="default", dtype=dtype, max_model_len=2048, max_num_seqs=n),
                model=model)
QUESTIONS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in "
    "May. How many clips did Natalia sell altogether in April and May?",
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. "
    "How much did she earn?",
    "Betty is saving money for a new wallet which costs $100. Betty has only half of the money "
    "she needs. Her parents decided to give her $15 for that purpose, and her grandparents twice "
    "as much as her parents. How much more money does Betty need to buy the wallet?",
    "James writes a 3-page letter to 2 different friends twice a week. How many pages does he "
    "write a year?",
]
prompts = [model.tokenizer.encode(f"Q{i}: {QUESTIONS[i % len(QUESTIONS)]}\nA:") for i in range(n)]
params = SamplingParams(max_tokens=1, temperature=0, ignore_eos=True)
ids = iter(range(10**6))

def first_step():
    for prompt in prompts:
        engine.add_request(f"r{next(ids)}", prompt, params)
    cpu, wall = time.process_time(), time.perf_counter()
    outputs = engine.step()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    assert sum(len(o.tokens) for o in outputs) == n, "every request gets its first token"
    while engine.has_unfinished():
        engine.step()
    return cpu, wall

first_step()  # warm-up
times = [first_step() for _ in range(steps)]
print(json.dumps({
    "prompt tokens": sum(map(len, prompts)),
    "ttft cpu ms": 1000 * statistics.median(c for c, _ in times),
    "ttft wall ms": 1000 * statistics.median(w for _, w in times),
}))
"""


def main(argv: list[str] | None = None) -> int:
    p = tree_parser(
        "python -m benchmarks.compare_prefill", __doc__, "runs/bench/compare_prefill.json"
    )
    p.add_argument("--requests", type=int, default=8, help="simultaneous requests")
    p.add_argument("--steps", type=int, default=5, help="timed first steps per run (median)")
    a = p.parse_args(argv)
    args = [a.dtype, a.threads, a.requests, a.steps]
    runs = run_alternated(a.trees, PROBE, args, a.repeats)
    base = {k: statistics.median(r[k] for r in runs[a.trees[0]]) for k in runs[a.trees[0]][0]}
    print(
        f"\n| {a.requests} requests at once, {a.dtype}, {a.threads} thread(s) | median (range) "
        "| ÷ first tree |"
    )
    print("|---|---|---|")
    for tree in a.trees:
        for name in ("ttft cpu ms", "ttft wall ms"):
            xs = [r[name] for r in runs[tree]]
            med = statistics.median(xs)
            print(
                f"| {tree}: {name} | {med:.1f} ({min(xs):.1f}–{max(xs):.1f}) "
                f"| {med / base[name]:.2f} |"
            )
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"args": vars(a), "runs": runs}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
