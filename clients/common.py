"""Types shared by the task modules and the runner, plus the tolerant JSONL data reader.

A task module (`gsm8k`, `csqa`) owns `load_examples`, `build_request`, `extract_answer` and
`score` (house-style point 18); the runner only moves `Request`s and `Output`s over HTTP.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clients.config import EvalError

logger = logging.getLogger(__name__)

COMPLETIONS = "/completions"
CHAT = "/chat/completions"


@dataclass(frozen=True)
class Example:
    id: str
    question: str  # GSM8K question, or the CSQA stem
    gold: str  # normalised answer: "18", "-2.5" or "B"
    gold_text: str = ""  # GSM8K: raw text after '####' (leading space kept, spec §6.1)
    choices: tuple[tuple[str, str], ...] = ()  # CSQA: (label, text) pairs, A..E


@dataclass(frozen=True)
class Request:
    endpoint: str  # COMPLETIONS or CHAT, relative to the base URL
    body: dict[str, Any]  # everything except model, seed and thought controls

    @property
    def prompt(self) -> Any:
        return self.body.get("prompt", self.body.get("messages"))


@dataclass(frozen=True)
class Output:
    """One parsed response (or, for CoT, both stages of one vote joined)."""

    text: str
    reasoning: str | None = None
    logprobs: dict[str, Any] | None = None  # completions shape: tokens, token_logprobs, ...
    usage: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Scored:
    prediction: str | None
    score: float  # 1.0/0.0 for exact match, in [0, 1] for paper-soft
    correct: bool | None  # None where the score is soft (paper-soft)
    extra: dict[str, Any] = field(default_factory=dict)


def read_jsonl(path: str | Path, parse: Callable[[dict[str, Any], int], Example]) -> list[Example]:
    """Parse a JSONL file with `parse(record, line_number)`; skip and report malformed lines.

    Raises EvalError when the file is missing or holds no valid record.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise EvalError(f"cannot read data file {path}: {exc.strerror or exc}") from exc
    examples: list[Example] = []
    bad: list[str] = []
    seen: set[str] = set()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            example = parse(json.loads(line), number)
        except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
            bad.append(f"{number} ({type(exc).__name__}: {exc})")
            continue
        if example.id in seen:
            bad.append(f"{number} (duplicate id {example.id})")
            continue
        seen.add(example.id)
        examples.append(example)
    if bad:
        shown = "; ".join(bad[:10]) + (f"; ... {len(bad) - 10} more" if len(bad) > 10 else "")
        if not examples:
            raise EvalError(f"{path}: no valid records; malformed lines: {shown}")
        logger.warning("%s: skipped %d malformed line(s): %s", path, len(bad), shown)
    if not examples:
        raise EvalError(f"{path}: no records")
    return examples


def load_hub(name: str, config: str | None, split: str) -> list[dict[str, Any]]:
    """Rows of a Hugging Face hub dataset; `datasets` is imported only here (it is heavy)."""
    try:
        from datasets import load_dataset

        return [dict(row) for row in load_dataset(name, config, split=split)]
    except Exception as exc:  # noqa: BLE001 - any failure becomes one clear message
        raise EvalError(
            f"could not load {name} ({split}) from the Hugging Face hub: "
            f"{type(exc).__name__}: {exc}; pass --data-file PATH with a local JSONL copy"
        ) from exc
