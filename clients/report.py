"""`quietstar eval report`: accuracy against thought tokens from run folders, drawn as a PNG.

Thoughts-off runs are a hollow square at x = 0; runs without a token count (server default,
or thoughts on at the server's length) are dashed horizontal lines. Error bars: 95 % Wilson.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

from clients.config import EvalError
from clients.results import SUMMARY_JSON

logger = logging.getLogger(__name__)

DEFAULT_PNG = "accuracy_vs_thought_tokens.png"


def load_summaries(paths: list[str | Path]) -> list[dict[str, Any]]:
    """summary.json files: a path itself, DIR/summary.json, or every one below DIR (a sweep)."""
    summaries = []
    for path in map(Path, paths):
        if path.is_file():
            files = [path]
        elif (path / SUMMARY_JSON).is_file():
            files = [path / SUMMARY_JSON]
        else:
            files = sorted(path.rglob(SUMMARY_JSON))
        if not files:
            raise EvalError(
                f"{path}: no {SUMMARY_JSON} found (pass `quietstar eval --out` folders)"
            )
        summaries += [json.loads(f.read_text(encoding="utf-8")) for f in files]
    return summaries


def default_png(paths: list[str | Path]) -> Path:
    first = Path(paths[0])
    return (first.parent if first.is_file() else first) / DEFAULT_PNG


def plot_accuracy(summaries: list[dict[str, Any]], out_png: str | Path) -> Path:
    """Draw one series per (task, protocol, model) and save the figure with the Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.5, 4.8))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    series: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for summary in summaries:
        series[(summary["task"], summary["protocol"], summary["model"])].append(summary)
    for index, (key, runs) in enumerate(sorted(series.items())):
        _draw_series(axes, " ".join(key), runs, f"C{index % 10}")
    ticks = {0 if s["thoughts"] is False else s["thought_tokens"] for s in summaries}
    axes.set_xticks(sorted(t for t in ticks if t is not None) or [0])
    axes.set_xlabel("thought tokens (0 = thoughts off)")
    axes.set_ylabel("accuracy")
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="best")
    axes.set_title("Accuracy vs thought tokens (95% Wilson intervals)")
    figure.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_png, dpi=120)
    logger.info("wrote %s", out_png)
    return out_png


def _draw_series(axes: Any, name: str, runs: list[dict[str, Any]], color: str) -> None:
    swept = sorted((r for r in runs if r["thoughts"] and r["thought_tokens"]), key=_tokens)
    if swept:
        xs = [_tokens(r) for r in swept]
        axes.errorbar(xs, *_y_err(swept), marker="o", capsize=3, color=color, label=name)
    off = [r for r in runs if r["thoughts"] is False]
    if off:
        axes.errorbar(
            [0] * len(off),
            *_y_err(off),
            marker="s",
            markerfacecolor="white",
            linestyle="none",
            capsize=3,
            color=color,
            label=f"{name}, thoughts off",
        )
    for run in runs:
        if run["thoughts"] is None or (run["thoughts"] and not run["thought_tokens"]):
            axes.axhline(
                run["accuracy"], linestyle="--", color=color, label=f"{name}, {run['label']}"
            )


def _tokens(run: dict[str, Any]) -> int:
    return int(run["thought_tokens"])


def _y_err(runs: list[dict[str, Any]]) -> tuple[list[float], list[list[float]]]:
    ys = [r["accuracy"] for r in runs]
    below = [max(0.0, r["accuracy"] - r["ci95"][0]) for r in runs]
    above = [max(0.0, r["ci95"][1] - r["accuracy"]) for r in runs]
    return ys, [below, above]
