"""NllEvalConfig: every knob of `quietstar eval nll`; the parser is generated from the fields.

The evaluated text is the held-out part of --data (or --eval-data); the calibrated base is fitted
on the training part of --data, so nothing is fitted on the tokens it is scored on.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields
from typing import Any

from .config import add_flag


def _opt(default: Any, help_: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help_, **extra})


@dataclass(frozen=True)
class NllEvalConfig:
    model: str = _opt("default", "model: `default`, a Quiet-STaR checkpoint folder or a HF folder")
    heads: str = _opt(
        "",
        "heads folder (quietstar_config.json + quietstar.safetensors) put on --model, e.g. a "
        "training step folder of a heads-only run",
    )
    data: str = _opt(
        "",
        "local .jsonl/.json/.txt/.parquet file: its training part fits the calibrated base, its "
        "held-out part is evaluated (unless --eval-data)",
    )
    eval_data: str = _opt("", "evaluate this file instead of the held-out part of --data")
    text_field: str = _opt("text", "record field holding the text")
    text_template: str = _opt("", "format string over record fields, e.g. '{question}\\n{answer}'")
    max_docs: int = _opt(0, "documents read from --data (0: all); must match the training run's")
    eval_fraction: float = _opt(0.05, "held-out fraction of --data (as in `quietstar train`)")
    split_seed: int = _opt(42, "seed of the held-out split (as `quietstar train --split-seed`)")
    seq_len: int = _opt(48, "window length: one seeded random window per document (spec §3.1)")
    window_seed: int = _opt(42, "seed of the window choice")
    max_windows: int = _opt(0, "held-out windows evaluated (0: all)")
    fit_max_windows: int = _opt(
        64, "training-split windows the calibration and the decile boundaries are fitted on"
    )
    lengths: str = _opt(
        "0,2,4,8,16",
        "thought lengths (sampled tokens) besides the checkpoint's trained one; 0 = START -> END",
    )
    sweep_max_windows: int = _opt(
        0, "windows scored at lengths other than the trained one (0: as --max-windows)"
    )
    batch_size: int = _opt(8, "windows per forward")
    seed: int = _opt(0, "seed of the sampled, random and shuffled thoughts")
    allow_overlap: bool = _opt(
        False,
        "evaluate even if held-out documents were in the heads' training data (warns loudly)",
    )
    out: str = _opt(
        "runs/eval_nll", "output folder: nll.json, nll.md, nll_vs_length.png, tokens.pt (per token)"
    )
    dtype: str = _opt(
        "auto",
        "backbone dtype: auto (bf16 where the device runs it natively, else fp32), bfloat16 or "
        "float32; every row of one evaluation uses it, so the paired differences compare like "
        "with like",
        choices=("auto", "bfloat16", "float32"),
    )

    def __post_init__(self) -> None:
        checks = [
            (bool(self.data), "--data is required (its training part fits the calibrated base)"),
            (0.0 < self.eval_fraction < 1.0 or bool(self.eval_data), "eval_fraction in (0, 1)"),
            (self.seq_len >= 2, "seq_len must be >= 2"),
            (self.batch_size >= 1 and self.fit_max_windows >= 1, "batch sizes must be >= 1"),
            (self.max_windows >= 0 and self.sweep_max_windows >= 0, "window counts must be >= 0"),
            (
                self.dtype in ("auto", "float32", "bfloat16"),
                "dtype must be auto, float32 or bfloat16",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        self.length_list  # noqa: B018 - validates --lengths

    @property
    def length_list(self) -> list[int]:
        try:
            values = sorted({int(x) for x in self.lengths.split(",") if x.strip()})
        except ValueError as e:
            raise ValueError(f"--lengths must be comma-separated integers: {self.lengths!r}") from e
        if any(v < 0 for v in values):
            raise ValueError(f"--lengths must be >= 0: {self.lengths!r}")
        return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quietstar eval nll",
        description="Held-out next-token NLL, base vs thought-aided, with controls on the same "
        "tokens: no content (L = 0), random thoughts, someone else's thoughts, calibrated base.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for f in fields(NllEvalConfig):
        add_flag(parser, f)
    return parser


def parse_config(argv: list[str]) -> NllEvalConfig:
    parser = build_parser()
    try:
        return NllEvalConfig(**vars(parser.parse_args(argv)))
    except ValueError as e:
        parser.error(str(e))
        raise
