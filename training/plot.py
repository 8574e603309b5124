"""`python -m training.plot RUN_DIR [-o FILE]`: draw a run's metrics.jsonl curves as one PNG."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .metrics import read_metrics

TRAIN_PANELS = [
    ("loss terms", ["base_loss", "talk_loss"]),
    ("policy loss (before beta)", ["policy_loss"]),
    ("mean reward", ["reward_mean"]),
    ("mixing weight w", ["w_mean", "w_std"]),
    ("learning rate", ["lr"]),
    ("tokens/s", ["tokens_per_s"]),
]
EVAL_PANELS = [
    ("held-out NLL (all tokens)", ["eval_base_nll", "eval_thought_nll"]),
    ("held-out NLL (hardest 10 %)", ["eval_hard_base_nll", "eval_hard_thought_nll"]),
]


def plot_run(run_dir: str | Path, output: str | Path | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    train = [r for r in records if r.get("kind", "train") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    panels = [(t, k, train) for t, k in TRAIN_PANELS] + [
        (t, k, evals) for t, k in EVAL_PANELS if evals
    ]
    cols = 2
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(9, 2.4 * rows), squeeze=False)
    for ax, (title, keys, rs) in zip(axes.flat, panels, strict=False):
        for key in keys:
            points = [(r["step"], r[key]) for r in rs if key in r]
            if points:
                ax.plot(*zip(*points, strict=True), label=key, marker="." if rs is evals else None)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.tight_layout()
    output = Path(output) if output else Path(run_dir) / "metrics.png"
    fig.savefig(output, dpi=80)
    plt.close(fig)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.plot", description=__doc__)
    parser.add_argument("run_dir", help="a run directory holding metrics.jsonl")
    parser.add_argument("-o", "--output", help="PNG path (default RUN_DIR/metrics.png)")
    args = parser.parse_args(argv)
    try:
        print(plot_run(args.run_dir, args.output))
    except (OSError, ValueError) as e:
        print(f"training.plot: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
