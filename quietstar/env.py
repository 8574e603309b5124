"""Environment variables read by the model core, typed, in one place."""

from __future__ import annotations

import os
from pathlib import Path


def quietstar_home() -> Path:
    """QUIETSTAR_HOME: where converted models are cached (default ~/.cache/quietstar)."""
    return Path(os.environ.get("QUIETSTAR_HOME", "~/.cache/quietstar")).expanduser()


def num_threads() -> int | None:
    """QUIETSTAR_NUM_THREADS: torch intra-op threads (unset: torch's default)."""
    value = os.environ.get("QUIETSTAR_NUM_THREADS")
    return int(value) if value else None


def device_for_tests() -> str:
    """QUIETSTAR_TEST_DEVICE: torch device the tiny-model tests run on (default cpu;
    `benchmarks/gpu_check.sh` sets cuda)."""
    return os.environ.get("QUIETSTAR_TEST_DEVICE") or "cpu"


def cpu_kernels_enabled() -> bool:
    """QUIETSTAR_CPU_KERNELS: `off` keeps PyTorch's own CPU linears instead of quietstar's decode
    kernels (quietstar/kernels; default on, for comparisons and for machines without a C++
    compiler, where they are skipped anyway)."""
    return os.environ.get("QUIETSTAR_CPU_KERNELS", "on").lower() not in ("off", "0", "false")
