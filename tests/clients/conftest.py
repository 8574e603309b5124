"""Fixtures for the client tests: tiny data files and a fresh fake endpoint per test."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.clients.eval_fakes import CSQA_ROWS, GSM8K_ROWS, FakeEndpoint, gsm8k_reply, write_jsonl


@pytest.fixture
def gsm8k_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "gsm8k.jsonl", GSM8K_ROWS)


@pytest.fixture
def csqa_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "csqa.jsonl", CSQA_ROWS)


@pytest.fixture
def fake() -> FakeEndpoint:
    return FakeEndpoint(gsm8k_reply)
