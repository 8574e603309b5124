"""quietstar's own CPU kernels (`cpu_linear.cpp`, `cpu_attention.cpp`, `cpu_layers.cpp`),
compiled for this machine on first use.

At one to a few rows, a linear layer is bound by reading its weight, and PyTorch's kernels for
that case (oneDNN's bf16 GEMM, `aten._weight_int8pack_mm`) reached about half of the memory
bandwidth this machine class has (benchmarks/RESULTS.md, "Decode linears"). These kernels stream
each weight row once for every activation row and prefetch ahead.

They are built with PyTorch's extension builder (g++ and ninja) for the instruction set PyTorch
itself runs (`torch.backends.cpu.get_cpu_capability()`, which honours ATEN_CPU_CAPABILITY: AVX-512,
AVX2, or a portable scalar build elsewhere), into $QUIETSTAR_HOME/kernels/, once per capability
and torch version (about 15 s; later processes load the built library). Where they cannot be
built, or with QUIETSTAR_CPU_KERNELS=off, `cpu_ops()` returns None, says why once, and the model
keeps PyTorch's kernels.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import time
from pathlib import Path

import torch

from ..env import cpu_kernels_enabled, quietstar_home

log = logging.getLogger(__name__)

SOURCES = [
    Path(__file__).with_name(f) for f in ("cpu_linear.cpp", "cpu_attention.cpp", "cpu_layers.cpp")
]
_AVX2 = ["-mavx2", "-mfma", "-mf16c"]
_AVX512 = ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", *_AVX2]
FLAGS = {  # the capability -> the instruction sets the kernels may use
    "AVX512_BF16": [*_AVX512, "-mavx512bf16"],
    "AVX512": _AVX512,
    "AVX2": _AVX2,
}


@functools.cache
def capability() -> str:
    """PyTorch's CPU capability, plus `_BF16` where AVX-512 comes with avx512_bf16 (the linears'
    bf16 dot-product path). Once per process: every quantised or bf16 layer asks at load."""
    from ..dtypes import cpu_flags

    cap = torch.backends.cpu.get_cpu_capability()
    if cap == "AVX512" and "avx512_bf16" in cpu_flags().split():
        return "AVX512_BF16"
    return cap


def build_name(cap: str | None = None) -> str:
    cap = cap or capability()
    torch_version = re.sub(r"[^0-9A-Za-z]", "_", torch.__version__)
    return f"quietstar_cpu_{cap.lower()}_torch{torch_version}"


@functools.cache
def cpu_ops():
    """torch.ops.quietstar_cpu (linear_bf16, linear_fp32, linear_int8, linear_q4_1, rms_norm, rope,
    silu_mul, decode_attention, decode_layers) built for this CPU, or None (logged once with the
    reason) when they are switched off or cannot be built."""
    if not cpu_kernels_enabled():
        log.info("quietstar CPU kernels off (QUIETSTAR_CPU_KERNELS=off): PyTorch's kernels only")
        return None
    from torch.utils import cpp_extension

    cap = capability()
    name = build_name(cap)
    build_dir = quietstar_home() / "kernels" / name
    build_dir.mkdir(parents=True, exist_ok=True)
    _drop_stale_lock(build_dir / "lock")
    if not (build_dir / f"{name}.so").exists():
        log.info("building quietstar CPU kernels for %s into %s (once, ~15 s)", cap, build_dir)
    try:
        cpp_extension.load(
            name=name,
            sources=[str(p) for p in SOURCES],
            extra_cflags=["-O3", "-fopenmp", *FLAGS.get(cap, [])],
            extra_ldflags=["-fopenmp"],
            build_directory=str(build_dir),
            is_python_module=False,
            verbose=os.environ.get("QUIETSTAR_KERNELS_VERBOSE") == "1",
        )
    except (RuntimeError, OSError, ImportError) as e:  # no compiler, ninja or headers
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        log.warning(
            "quietstar CPU kernels could not be built (%s); decoding uses PyTorch's kernels, "
            "which are slower at a few rows. Install a C++ compiler (g++) to get them.",
            first_line,
        )
        return None
    _register_fakes()
    log.info("quietstar CPU kernels loaded (%s build)", cap)
    return torch.ops.quietstar_cpu


STALE_LOCK_SECONDS = 300  # a build takes ~15 s; a lock this old was left by a killed one


def _drop_stale_lock(lock: Path) -> None:
    """PyTorch's builder holds `lock` while one process builds and makes the others wait for it
    to go; a build killed midway (Ctrl-C on the first start) leaves it behind, and every later
    start would wait forever."""
    try:
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return
    if age > STALE_LOCK_SECONDS:
        log.warning("removing %s, left %.0f s ago by an interrupted kernel build", lock, age)
        lock.unlink(missing_ok=True)


def _register_fakes() -> None:
    """Shapes for torch.compile: each op returns x's leading shape with N features."""

    from .modules import kernel_rows

    def out(x, w, n=None):
        return x.new_empty(*x.shape[:-1], kernel_rows(w) if n is None else n)

    for op in ("linear_bf16", "linear_fp32"):
        torch.library.register_fake(f"quietstar_cpu::{op}")(
            lambda x, w, bias, out_features=None: out(x, w, out_features)
        )
    torch.library.register_fake("quietstar_cpu::linear_q4_1")(
        lambda x, w, bias, out_features=None: out(x, w, out_features)
    )
    torch.library.register_fake("quietstar_cpu::linear_int8")(
        lambda x, w, scales, bias: out(x, w, scales.shape[0])
    )
    torch.library.register_fake("quietstar_cpu::rms_norm")(lambda x, w, eps: torch.empty_like(x))
    torch.library.register_fake("quietstar_cpu::rope")(lambda x, cos, sin: x.new_empty(x.shape))
    torch.library.register_fake("quietstar_cpu::silu_mul")(
        lambda x: x.new_empty(*x.shape[:-1], x.shape[-1] // 2)
    )
    torch.library.register_fake("quietstar_cpu::decode_attention")(
        lambda q, k_new, v_new, k, v, tk, tv, info, scale: torch.empty_like(q)
    )
