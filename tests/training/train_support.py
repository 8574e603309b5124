"""Helpers for the training tests: tiny checkpoints and data files, CLI argument lists."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.support import byte_tokenizer, make_hf_checkpoint, randomize_heads  # noqa: F401

WORDS = "the cat sat on a mat and then 12 plus 30 is 42 so we add more apples to the basket".split()


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny models run fastest on one thread, especially on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_jsonl(path: Path, records: list[dict] | list[str]) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("".join(line + "\n" for line in lines))
    return path


def gsm_records(n: int, seed: int = 0) -> list[dict]:
    """GSM8K-shaped records of varying length (some longer, some shorter than a window)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        k = 4 + int(torch.randint(0, 14, (1,), generator=g))
        words = [WORDS[int(j)] for j in torch.randint(0, len(WORDS), (k,), generator=g)]
        out.append(
            {"question": f"Q{i}: " + " ".join(words[: k // 2]), "answer": " ".join(words[k // 2 :])}
        )
    return out


def train_args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    """A fast tiny configuration: 3 thought tokens, 2 talk tokens, 24-token windows."""
    return [
        "--model",
        str(model),
        "--data",
        str(data),
        "--text-template",
        "{question}\\n{answer}",
        "--out",
        str(out),
        "--seq-len",
        "24",
        "--batch-size",
        "4",
        "--n-ahead",
        "6",
        "--n-ahead-talk",
        "2",
        "--max-steps",
        "2",
        "--warmup-steps",
        "1",
        "--lr",
        "1e-3",
        "--eval-every",
        "0",
        "--no-plot",
        "--dtype",  # the same numbers on every CPU class (auto differs between them)
        "float32",
        *extra,
    ]
