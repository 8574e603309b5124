"""The compute dtype for a device (`--dtype auto`) and what this CPU's kernels accelerate.

bf16 halves the bytes a decode step reads, which wins wherever the matmul kernels run it
natively: CUDA, and CPUs where oneDNN has a bf16 path (avx512_bf16, AMX, avx_ne_convert). On
CPUs without one, bf16 is emulated: every batched bf16 matmul (prefill, thought-aided scoring)
runs several times slower than fp32, so `auto` picks fp32 there. Batch-1 decode loses nothing by
it for a model of bf16 values: its fp32 decode kernels read exact bf16 copies of the weights
(`quietstar.kernels.modules.RowsLinear`); the trade-off tables are in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}
DTYPE_CHOICES = ("auto", *DTYPES)


@dataclass(frozen=True)
class CpuCaps:
    """What this CPU's kernels accelerate, as torch and oneDNN report it (not the CPU model)."""

    isa: str  # ATen's vectorised kernel level: "AVX512", "AVX2", "DEFAULT", ...
    mkldnn: bool  # oneDNN is built in (linear pre-packing possible at all)
    onednn_bf16: bool  # oneDNN runs bf16 matmuls natively (honours ONEDNN_MAX_CPU_ISA)
    amx: bool  # AMX tiles (Sapphire Rapids and later)

    def describe(self) -> str:
        bf16 = "native bf16" if self.onednn_bf16 else "bf16 emulated"
        return f"CPU {self.isa}, {bf16}{', AMX' if self.amx else ''}"


@functools.cache
def probe_cpu() -> CpuCaps:
    """Ask torch/oneDNN, once per process. oneDNN's own check is the one that matters: it says
    no on AVX2-only CPUs and under ONEDNN_MAX_CPU_ISA=AVX2 alike, where the CPUID flags can't."""
    mkldnn = torch.backends.mkldnn.is_available()
    bf16 = mkldnn and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    amx = bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())
    return CpuCaps(torch.backends.cpu.get_cpu_capability(), mkldnn, bf16, amx)


@dataclass(frozen=True)
class DtypeChoice:
    dtype: torch.dtype
    requested: str  # what the user asked for: "auto" or a dtype name
    reason: str

    @property
    def name(self) -> str:
        return str(self.dtype).removeprefix("torch.")


def resolve_dtype(
    requested: str | torch.dtype,
    device: str | torch.device = "cpu",
    caps: CpuCaps | None = None,
    quantize: str | None = None,
    int8_kernel: bool | None = None,
) -> DtypeChoice:
    """`auto` -> the dtype this device runs fastest for a server's mixed work; an explicit dtype
    (name or torch.dtype) is kept as it is. `caps` replaces the probe (tests fake CPUs with it).
    `quantize`: "int8", "int4" or "q4_1" weights, whose dtype is then that of the activations.
    `int8_kernel`: whether quietstar's int8 CPU kernel serves here (None: build or load it and
    see; tests fake it)."""
    if isinstance(requested, torch.dtype):
        requested = str(requested).removeprefix("torch.")
    if requested != "auto":
        if requested not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPE_CHOICES}, got {requested!r}")
        return DtypeChoice(DTYPES[requested], requested, "asked for explicitly")
    kind = torch.device(device).type
    if kind == "cuda":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return DtypeChoice(torch.bfloat16, "auto", "CUDA device with bf16 support")
        return DtypeChoice(torch.float16, "auto", "CUDA device without bf16: float16")
    if kind != "cpu":
        return DtypeChoice(torch.float32, "auto", f"{kind} device: float32, the safe default")
    caps = caps or probe_cpu()
    if quantize == "q4_1":
        return DtypeChoice(
            torch.bfloat16 if caps.onednn_bf16 else torch.float32,
            "auto",
            f"{caps.describe()}, q4_1 weights: quietstar's kernel rounds activations to 8 bits "
            "from either dtype; the rest of the model as without quantisation",
        )
    if quantize == "int8" and not caps.onednn_bf16:
        if int8_kernel is None:
            from .kernels import cpu_ops
            from .kernels.modules import kernel_max_rows

            int8_kernel = cpu_ops() is not None and kernel_max_rows(torch.float32) > 0
        if int8_kernel:
            return DtypeChoice(
                torch.float32,
                "auto",
                f"{caps.describe()}, int8 weights: quietstar's int8 kernel takes fp32 activations "
                "as fast as bf16 ones, and prefill widens the weights for fp32 matmuls, not "
                "emulated bf16 ones",
            )
    if quantize is not None:  # PyTorch's int8/int4 CPU kernels: fp32 takes a scalar path
        return DtypeChoice(torch.bfloat16, "auto", "quantised weights: the CPU kernels want bf16")
    if caps.onednn_bf16:
        return DtypeChoice(torch.bfloat16, "auto", f"{caps.describe()}: bf16 matmuls are native")
    return DtypeChoice(
        torch.float32,
        "auto",
        f"{caps.describe()}: batched bf16 matmuls would run several times slower than fp32",
    )


def can_prepack(dtype: torch.dtype, caps: CpuCaps | None = None) -> tuple[bool, str]:
    """Whether oneDNN can pre-pack linear weights of `dtype` on this CPU, and why (not)."""
    caps = caps or probe_cpu()
    if not caps.mkldnn or not hasattr(torch.ops.mkldnn, "_reorder_linear_weight"):
        return False, "this torch build has no oneDNN"
    if dtype == torch.float32:
        return True, "fp32"
    if dtype == torch.bfloat16:
        if caps.onednn_bf16:
            return True, "native bf16"
        return False, f"{caps.describe()}: oneDNN refuses to pre-pack bf16 weights"
    return False, f"no pre-packed path for {dtype}"


REPORTED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "avx_ne_convert")


def cpu_flags() -> str:
    """The CPU flags that decide the kernel class, for reports next to every figure (Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(line.split(":", 1)[1].split() for line in f if line.startswith("flags"))
    except (OSError, StopIteration):
        return "unknown"
    have = [flag for flag in REPORTED_FLAGS if flag in flags]
    return " ".join(have) or "none of " + " ".join(REPORTED_FLAGS)
