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
SMOOTH_MIN_POINTS = 40
EXACT_KEYS = {"lr"}  # drawn as is, never smoothed
EVAL_PANELS = [
    ("held-out NLL (all tokens)", ["eval_base_nll", "eval_thought_nll"]),
    ("held-out NLL (hardest 10 %)", ["eval_hard_base_nll", "eval_hard_thought_nll"]),
]


def plot_run(run_dir: str | Path, output: str | Path | None = None) -> Path:
    """Draw RUN_DIR/metrics.jsonl (or a metrics file) -> the PNG path (default next to it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    train = [r for r in records if r.get("kind", "train") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    panels = [(t, k, train) for t, k in TRAIN_PANELS]
    panels += [(t, k, evals) for t, k in EVAL_PANELS if evals]
    rows = (len(panels) + 1) // 2
    fig, axes = plt.subplots(rows, 2, figsize=(9, 2.4 * rows), squeeze=False)
    for ax, (title, keys, rs) in zip(axes.flat, panels, strict=False):
        for key in keys:
            _draw(ax, key, [(r["step"], r[key]) for r in rs if key in r], is_eval=rs is evals)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.ticklabel_format(axis="y", useOffset=False)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.tight_layout()
    source = Path(run_dir)
    output = (
        Path(output) if output else (source if source.is_dir() else source.parent) / "metrics.png"
    )
    fig.savefig(output, dpi=80)
    plt.close(fig)
    return output


def _draw(ax, key: str, points: list[tuple[int, float]], is_eval: bool) -> None:
    """Eval points as markers; noisy per-step curves faint, with a running mean on top."""
    if not points:
        return
    steps, values = zip(*points, strict=True)
    if is_eval or key in EXACT_KEYS or len(values) < SMOOTH_MIN_POINTS:
        ax.plot(steps, values, label=key, marker="." if is_eval else None)
        return
    window = max(2, len(values) // 20)
    mean = [
        sum(values[max(0, i - window + 1) : i + 1]) / len(values[max(0, i - window + 1) : i + 1])
        for i in range(len(values))
    ]
    (line,) = ax.plot(steps, mean, label=f"{key} (mean of {window})")
    ax.plot(steps, values, color=line.get_color(), alpha=0.25, linewidth=0.8)


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
