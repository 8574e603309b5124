"""Draw the benchmark results as one PNG: engine ratios against their targets, and visible
tokens/s of each served configuration at each concurrency.

    python -m benchmarks.plot results/benchmarks --out results/benchmarks/results.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _target(text: str) -> float:
    return float(text.split()[-1])


def draw(results: Path, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    engine = json.loads((results / "engine.json").read_text())["results"]
    served = {
        p.stem: json.loads(p.read_text())
        for p in sorted(results.glob("*.json"))
        if p.stem != "engine"
    }
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5.5))
    names = [r["name"].split(":")[0][:48] for r in engine]
    left.barh(names, [r["value"] for r in engine], color="tab:blue", label="measured")
    left.scatter(
        [_target(r["target"]) for r in engine],
        names,
        color="tab:red",
        marker="|",
        s=400,
        label="target",
    )
    left.set_xscale("log")
    left.set_xlabel("ratio (log scale)")
    left.set_title("bench engine: ratios vs targets")
    left.legend(loc="lower right")
    width = 0.8 / max(1, len(served))
    for i, (name, report) in enumerate(served.items()):
        levels = [r["concurrency"] for r in report["results"]]
        rates = [r["visible_tokens_per_s"] or 0 for r in report["results"]]
        right.bar([j + i * width for j in range(len(levels))], rates, width, label=name)
        right.set_xticks(
            [j + 0.4 - width / 2 for j in range(len(levels))], [f"{c} streams" for c in levels]
        )
    right.set_ylabel("visible tokens/s")
    right.set_title("bench serve: HTTP, same client and prompts")
    right.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.plot", description=__doc__)
    p.add_argument("results", type=Path, help="folder with engine.json and bench-serve JSON files")
    p.add_argument("--out", type=Path, default=Path("runs/bench/results.png"), help="PNG to write")
    args = p.parse_args(argv)
    print(draw(args.results, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
