"""Summaries of `quietstar eval nll`'s per-token arrays -> nll.json, nll.md, nll_vs_length.png.

Every row is compared with the real thing on the same tokens: paired differences "row − thought"
(positive: the real thoughts do better) with cluster-robust standard errors by document.
"""

from __future__ import annotations

import json
import platform
import shlex
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch

from .stats import assign_deciles, mean_se, paired

BASE_ROWS = ("base", "base_temperature", "base_unigram")


def _length_of(name: str) -> int:
    return int(name.split("@")[1])


def summarize(arrays: dict[str, torch.Tensor], trained: int, edges: torch.Tensor) -> dict:
    doc = arrays["doc"]
    real = arrays[f"thought@{trained}"]
    main = {name: arrays[name] for name in BASE_ROWS}
    main["no_content"] = arrays["thought@0"] if "thought@0" in arrays else None
    for name in ("thought", "random", "shuffled"):
        main[name] = arrays.get(f"{name}@{trained}")
    main = {k: v for k, v in main.items() if v is not None}
    deciles = assign_deciles(arrays["entropy"], edges)
    return {
        "tokens": int(real.numel()),
        "docs": int(doc.unique().numel()),
        "rows": {k: mean_se(v, doc) for k, v in main.items()},
        "minus_thought": {k: paired(v, real, doc) for k, v in main.items() if k != "thought"},
        "w": {k: _w_stats(arrays, k, trained) for k in ("thought", "random", "shuffled")},
        "deciles": [_decile(main, doc, deciles == d, d) for d in range(10)],
        "lengths": _lengths(arrays, doc),
    }


def _w_stats(arrays, name: str, length: int) -> dict[str, float] | None:
    w = arrays.get(f"w:{name}@{length}")
    return None if w is None else {"mean": float(w.mean()), "std": float(w.std())}


def _decile(main: dict, doc: torch.Tensor, sel: torch.Tensor, index: int) -> dict:
    out: dict[str, Any] = {"decile": index + 1, "tokens": int(sel.sum())}
    if int(sel.sum()) == 0:
        return out
    out["rows"] = {k: float(v[sel].double().mean()) for k, v in main.items()}
    out["minus_thought"] = {
        k: paired(v[sel], main["thought"][sel], doc[sel]) for k, v in main.items() if k != "thought"
    }
    return out


def _lengths(arrays: dict[str, torch.Tensor], doc: torch.Tensor) -> dict[str, dict]:
    """Per length: each row minus the base on the same tokens (the sweep may use a prefix)."""
    out: dict[str, dict] = {}
    names = sorted({k for k in arrays if "@" in k and not k.startswith("w:")}, key=_length_of)
    for name in names:
        values = arrays[name]
        n = values.numel()
        entry = out.setdefault(str(_length_of(name)), {"tokens": n})
        kind = name.split("@")[0]
        entry[kind] = mean_se(values, doc[:n])
        entry[f"{kind}_minus_base"] = paired(values, arrays["base"][:n], doc[:n])
    return out


def machine() -> dict[str, Any]:
    flags = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        line = next((x for x in cpuinfo.read_text().splitlines() if x.startswith("flags")), "")
        flags = " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f in line)
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_flags": flags,
    }


def command(cfg) -> str:
    """The command line that reproduces this evaluation (non-default options only)."""
    parts = ["quietstar eval nll"]
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if value == f.default:
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else "--no-" + flag[2:])
        else:
            parts.append(f"{flag} {shlex.quote(str(value))}")
    return " ".join(parts)


def write_outputs(cfg, model, arrays, fitted, edges, overlap, trained: int) -> dict:
    summary = summarize(arrays, trained, edges)
    result = {
        "command": command(cfg),
        "config": asdict(cfg),
        "model": {
            "heads_trained": model.config.heads_trained,
            "trained_length": trained,
            "provenance": model.config.provenance,
        },
        "overlap": overlap,
        "calibration": fitted.summary(),
        "entropy_decile_edges": [float(x) for x in edges],
        "machine": machine(),
        **summary,
    }
    rows = summary["rows"]
    result["headline"] = (
        f"{rows['thought']['mean']:.4f} vs base {rows['base']['mean']:.4f} "
        f"on {summary['tokens']} tokens"
    )
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "nll.json").write_text(json.dumps(result, indent=2) + "\n")
    torch.save(arrays, out / "tokens.pt")  # per-token rows, for re-analysis
    from .nll_markdown import markdown, plot_lengths

    (out / "nll.md").write_text(markdown(result))
    plot_lengths(result, out / "nll_vs_length.png")
    return result
