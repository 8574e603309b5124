"""`python -m benchmarks.compare_trees A B ...`: the engine of several source trees side by side.

Each measurement runs in a fresh subprocess per tree (the trees share module names), alternated
A B A B ... so machine noise hits both alike; the median over repeats is printed with the spread.
Times are the process's CPU time (`time.process_time`, with one torch thread by default): on a
shared machine, wall time mostly measures the other tenants.
Figures: thoughts-off tok/s (and transformers `generate` in the same process), thoughts-on time
per visible token ÷ (L + 2) thoughts-off steps, K=4 ÷ K=1, and 8 thought-on streams ÷ 1.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

PROBE = r"""
import dataclasses, json, sys, time
import torch
sys.path.insert(0, ".")
import quietstar
from server.engine import Engine, EngineConfig, SamplingParams, ThoughtParams

dtype, threads, tokens, think_tokens, L = sys.argv[1], *map(int, sys.argv[2:])
torch.set_num_threads(threads)
model = quietstar.load("default", getattr(torch, dtype), "cpu")
engine = Engine(EngineConfig(model="default", dtype=dtype, max_model_len=2048, max_num_seqs=8),
                model=model)
prompt = model.tokenizer.encode("Q: Natalia sold clips to 48 of her friends in April, and then "
                                "she sold half as many clips in May. How many altogether?\nA:")
K_FIELD = "num_thoughts" if "num_thoughts" in {f.name for f in dataclasses.fields(ThoughtParams)} else "count"
ids = iter(range(10**6))

def run(n, max_tokens, L=None, K=1):
    th = ThoughtParams(enabled=L is not None, num_tokens=L, **{K_FIELD: K})
    p = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True, thoughts=th)
    for _ in range(n):
        engine.add_request(f"b{next(ids)}", prompt, p)
    start = time.process_time()
    while engine.has_unfinished():
        engine.step()
    return time.process_time() - start

def hf_generate(n):
    x = torch.tensor([prompt])
    start = time.process_time()
    with torch.inference_mode():
        hf.generate(x, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return time.process_time() - start

from transformers import AutoModelForCausalLM
hf = AutoModelForCausalLM.from_pretrained(model.source, dtype=model.dtype)
run(1, 4), run(1, 2, L, 1), hf_generate(4)  # warm-up
off, hf_t = run(1, tokens), hf_generate(tokens)
on1, on4 = run(1, think_tokens, L, 1), run(1, think_tokens, L, 4)
on8 = run(8, think_tokens, L, 1)
print(json.dumps({
    "off tok/s": tokens / off,
    "off ÷ transformers generate": hf_t / off,
    "on visible token ÷ ((L+2) × off step)": (on1 / think_tokens) / ((L + 2) * off / tokens),
    "K=4 ÷ K=1": on4 / on1,
    "8 streams ÷ 1 (visible tok/s)": (8 / on8) / (1 / on1),
}))
"""


def run_alternated(trees: list[str], probe: str, args: list, repeats: int) -> dict[str, list[dict]]:
    """`python -c probe args...` in each tree, alternated A B A B ... `repeats` times; each run's
    last stdout line is its JSON result. Each tree gets its own QUIETSTAR_HOME (in its .cache/):
    trees whose CPU kernels differ would otherwise rebuild the one shared build on every run, and
    each converts its own copy of the model (once, outside the timings)."""
    runs: dict[str, list[dict]] = {tree: [] for tree in trees}
    for _ in range(repeats):
        for tree in trees:
            home = Path(tree).resolve() / ".cache" / "compare-trees-home"
            out = subprocess.run(
                [sys.executable, "-c", probe, *map(str, args)],
                cwd=tree,
                capture_output=True,
                text=True,
                check=True,
                env=dict(os.environ, QUIETSTAR_HOME=str(home)),
            )
            runs[tree].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(tree, runs[tree][-1], flush=True)
    return runs


def median_table(title: str, trees: list[str], runs: dict[str, list[dict]]) -> str:
    """Markdown: one row per measurement, one column per tree, median (min–max) of its runs."""
    lines = [f"| {title} | {' | '.join(trees)} |", "|---|" + "---|" * len(trees)]
    for name in runs[trees[0]][0]:
        cells = []
        for tree in trees:
            xs = [r[name] for r in runs[tree]]
            cells.append(f"{statistics.median(xs):.2f} ({min(xs):.2f}–{max(xs):.2f})")
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return "\n".join(lines)


def tree_parser(prog: str, description: str | None, out: str) -> argparse.ArgumentParser:
    """The flags every tree comparison has: trees, dtype, threads, repeats, output path."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("trees", nargs="+", help="source trees (repository roots), first the baseline")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--repeats", type=int, default=3, help="alternated runs per tree (median)")
    p.add_argument("--out", default=out, help="JSON output path")
    return p


def main(argv: list[str] | None = None) -> int:
    p = tree_parser("python -m benchmarks.compare_trees", __doc__, "runs/bench/compare_trees.json")
    p.add_argument("--tokens", type=int, default=48, help="visible tokens, thoughts off")
    p.add_argument("--think-tokens", type=int, default=8, help="visible tokens, thoughts on")
    p.add_argument("--thought-tokens", type=int, default=8, help="L")
    a = p.parse_args(argv)
    args = [a.dtype, a.threads, a.tokens, a.think_tokens, a.thought_tokens]
    runs = run_alternated(a.trees, PROBE, args, a.repeats)
    print("\n" + median_table(f"measurement ({a.dtype}, {a.threads} threads)", a.trees, runs))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"args": vars(a), "runs": runs}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
