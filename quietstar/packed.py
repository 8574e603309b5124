"""Inference-only linear layers with weights pre-reordered for oneDNN (CPU, fp32 or bf16).

A plain `F.linear` on CPU lets oneDNN reorder the weight on every call. Reordering once at load
made the decode matmuls faster on both CPU classes measured (benchmarks/RESULTS.md): on the
AVX-512 machine, bf16 batch-1 matmuls ~20-45 % faster and fp32 ones 1.3-2.7x (the 49152x576 LM
head 7.3 -> 3.9 ms at one row); on AVX2, fp32 1.3-2x. Whether a dtype can be packed is decided
once per load (`quietstar.dtypes.can_prepack`). Used by the engine's `fuse_for_inference`;
training and checkpoints never see these modules.
"""

from __future__ import annotations

import itertools
import logging
import os
import weakref

import torch
from torch import nn

from .dtypes import can_prepack

log = logging.getLogger(__name__)


class PackedLinear(nn.Module):
    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.out_features, self.in_features = linear.weight.shape  # not the attributes: a grown
        # vocabulary replaces the tied weight without updating them
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), 1)
        self.bias = None if linear.bias is None else linear.bias.detach()
        self.handle = next(_handles)  # how a compiled graph names the packed weight
        _PACKED[self.handle] = self.packed
        weakref.finalize(self, _PACKED.pop, self.handle, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        if torch.compiler.is_compiling():  # opaque to the compiler: see packed_linear
            out = packed_linear(flat, self.handle, self.out_features, self.bias)
        else:
            out = torch.ops.mkldnn._linear_pointwise(flat, self.packed, self.bias, "none", [], "")
        return out.view(*x.shape[:-1], self.out_features)


# Packed weights by handle. A compiled graph gets the handle, an int, not the oneDNN tensor:
# torch.compile's tracing of those opaque tensors corrupted memory in the compiled call.
_PACKED: dict[int, torch.Tensor] = {}
_handles = itertools.count()


@torch.library.custom_op("quietstar::packed_linear", mutates_args=())
def packed_linear(
    x: torch.Tensor, handle: int, out_features: int, bias: torch.Tensor | None
) -> torch.Tensor:
    """A pre-packed linear as one opaque op for torch.compile: Inductor's own lowering of the
    oneDNN linear expects weights it froze itself, not ours."""
    return torch.ops.mkldnn._linear_pointwise(x, _PACKED[handle], bias, "none", [], "")


@packed_linear.register_fake
def _(x, handle, out_features, bias):
    return x.new_empty(x.shape[0], out_features)


def _linears(module: nn.Module) -> list[tuple[nn.Module, str, nn.Linear]]:
    found = []
    for name, child in module.named_children():
        if isinstance(child, nn.Linear):
            found.append((module, name, child))
        else:
            found += _linears(child)
    return found


def pack_linears(module: nn.Module) -> int:
    """Replace every CPU nn.Linear below `module` in place by its fastest inference form for the
    model's dtype on this CPU; returns how many. bf16: quietstar's decode kernels where they build
    (`quietstar.kernels`), else oneDNN pre-packing where the CPU has native bf16; fp32: oneDNN
    pre-packing, and quietstar's kernels for decode-sized steps where they build and memory
    allows (`_use_rows_kernel`). The decision and any refusal are logged once."""
    linears = [(m, n, lin) for m, n, lin in _linears(module) if lin.weight.device.type == "cpu"]
    if not linears:
        return 0
    dtype = linears[0][2].weight.dtype
    shared = _shared_weights(module)
    if dtype == torch.bfloat16 and _use_rows_kernel(linears, shared=shared):
        return len(linears)
    ok, why = can_prepack(dtype)
    if ok:
        try:
            packed = [(m, n, PackedLinear(lin)) for m, n, lin in linears]
        except RuntimeError as e:  # an unusual oneDNN build: keep every plain layer
            ok, why = False, f"oneDNN refused the reorder ({e})"
    if not ok:
        log.info("linear weights not pre-packed: %s", why)
        return 0
    if dtype == torch.float32 and _use_rows_kernel(linears, packed, shared):
        return len(packed)
    for parent, name, layer in packed:
        setattr(parent, name, layer)
    log.info("pre-packed %d linear weights for oneDNN (%s)", len(packed), why)
    return len(packed)


# fp32 weights keep a copy for quietstar's kernel (bf16 where every value is one, as from a bf16
# checkpoint; else fp32) beside oneDNN's packed one (prefill and scoring) while both fit in this
# share of the machine's memory.
FP32_TWO_COPIES_MAX_MEMORY_SHARE = 1 / 8


def _shared_weights(module: nn.Module) -> set[int]:
    """Storage addresses of the parameters of `module`'s other layers (a tied LM head's weight is
    its embedding's)."""
    return {
        p.data_ptr()
        for m in module.modules()
        if not isinstance(m, nn.Linear)
        for p in m.parameters(recurse=False)
    }


def _use_rows_kernel(linears, packed=None, shared: set[int] = frozenset()) -> bool:
    """Every linear through quietstar's kernel at decode-sized steps, where the kernels serve
    every layer. bf16 (`packed` None): F.linear beyond. fp32: the oneDNN pre-packed layers in
    `packed` beyond (prefill, scoring), if the kernel's copy of the weights (bf16 for a weight
    whose every value is a bf16 value) fits in FP32_TWO_COPIES_MAX_MEMORY_SHARE of the memory
    (else pre-packed only)."""
    from .kernels.modules import RowsLinear, bf16_copy, linear_kernels_serve

    if not all(linear_kernels_serve(lin.weight) for _, _, lin in linears):
        return False
    larges, halves = [None] * len(linears), [None] * len(linears)
    if packed is not None:
        halves = [bf16_copy(lin.weight.detach()) for _, _, lin in linears]
        extra = sum(
            lin.weight.numel() * (4 if half is None else 2)
            for (_, _, lin), half in zip(linears, halves)
        )
        memory = physical_memory()
        if extra > memory * FP32_TWO_COPIES_MAX_MEMORY_SHARE:
            log.info(
                "fp32 linears pre-packed for oneDNN only: a second copy for quietstar's decode "
                "kernel (%.1f GB) would pass 1/8 of this machine's %.0f GB",
                extra / 1e9,
                memory / 1e9,
            )
            return False
        larges = [large for _, _, large in packed]
    from_copies = sum(half is not None for half in halves)
    for i, ((parent, name, lin), large) in enumerate(zip(linears, larges)):
        # the layer keeps its tiled copy of the bf16 one: drop each as it is used, so that the
        # load holds one extra copy of the weights at a time, as `extra` counts
        half, halves[i] = halves[i], None
        is_shared = lin.weight.data_ptr() in shared
        setattr(parent, name, RowsLinear(lin, large=large, bf16_weight=half, shared=is_shared))
    if packed is None:
        log.info("%d bf16 linears decode through quietstar's CPU kernel", len(linears))
    else:
        log.info(
            "%d fp32 linears: decode steps through quietstar's CPU kernel (%d of them from a bf16 "
            "copy: every value is a bf16 value), prefill and scoring through oneDNN pre-packed "
            "weights (%.1f GB more memory)",
            len(linears),
            from_copies,
            extra / 1e9,
        )
    return True


def physical_memory() -> int:
    """Bytes of RAM on this machine."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
