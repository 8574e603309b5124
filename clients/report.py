"""`quietstar eval report`: accuracy against thought tokens from run folders, drawn as a PNG.

One colour per (task, protocol, model). Thoughts sampled from the model are a solid line over
the thought lengths; the content control (`--thought-content random`: uniform tokens in the same
START/END frame) is a dashed line with crosses on the same axes, and x = 0 (START -> END only) is
the no-content control. Thoughts-off runs are a dotted horizontal line; runs without a token count
(server default, or thoughts on at the server's length) are dash-dot lines. Error bars: 95 %
Wilson.
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
    ticks = {s["thought_tokens"] for s in summaries if s["thoughts"]}
    axes.set_xticks(sorted(t for t in ticks if t is not None) or [0])
    axes.set_xlabel("thought tokens (0 = START -> END only: the no-content control)")
    axes.set_ylabel("accuracy")
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="best")
    axes.set_title("Accuracy vs thought tokens, with content controls (95% Wilson intervals)")
    figure.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_png, dpi=120)
    logger.info("wrote %s", out_png)
    return out_png


CONTENT_STYLES = {  # thought content -> (line style, marker, legend suffix, x offset)
    "model": ("-", "o", "", 0.0),
    "random": ("--", "x", ", random thoughts (control)", 0.1),  # dodged: error bars stay apart
}


def _draw_series(axes: Any, name: str, runs: list[dict[str, Any]], color: str) -> None:
    on = [r for r in runs if r["thoughts"] and r["thought_tokens"] is not None]
    empty = [r for r in on if _tokens(r) == 0]  # START -> END: no content to randomise
    for content, (linestyle, marker, suffix, dx) in CONTENT_STYLES.items():
        swept = [r for r in on if _content(r) == content and _tokens(r) > 0]
        if not swept:
            continue
        swept = sorted(empty + swept, key=_tokens)  # every line starts at the shared L = 0 point
        xs = [_tokens(r) + (dx if _tokens(r) else 0.0) for r in swept]
        axes.errorbar(
            xs, *_y_err(swept), marker=marker, linestyle=linestyle, capsize=3, color=color,
            label=name + suffix,
        )  # fmt: skip
    if empty and not any(_tokens(r) > 0 for r in on):
        axes.errorbar([0] * len(empty), *_y_err(empty), marker="o", capsize=3, color=color,
                      linestyle="none", label=f"{name}, START -> END only")  # fmt: skip
    for run in runs:
        if run["thoughts"] is False:
            axes.axhline(run["accuracy"], linestyle=":", color=color, label=f"{name}, thoughts off")
        elif run["thoughts"] is None or run["thought_tokens"] is None:
            axes.axhline(
                run["accuracy"], linestyle="-.", color=color, label=f"{name}, {run['label']}"
            )


def _content(run: dict[str, Any]) -> str:
    return run.get("thought_content") or "model"  # summaries written before the control


def _tokens(run: dict[str, Any]) -> int:
    return int(run["thought_tokens"])


def _y_err(runs: list[dict[str, Any]]) -> tuple[list[float], list[list[float]]]:
    ys = [r["accuracy"] for r in runs]
    below = [max(0.0, r["accuracy"] - r["ci95"][0]) for r in runs]
    above = [max(0.0, r["ci95"][1] - r["accuracy"]) for r in runs]
    return ys, [below, above]
