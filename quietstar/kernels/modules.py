"""Inference-only layers that run through quietstar's CPU kernels (see `quietstar.kernels`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def kernel_max_rows() -> int:
    """Up to this many rows the bf16 kernel is faster than F.linear on the same weight (measured
    in benchmarks/RESULTS.md, "Decode linears"), so larger calls (prefill, scoring, wide thought
    batches) take F.linear: 32 with AVX512-BF16 dot products, 8 with fp32 FMAs."""
    from . import capability

    return 32 if capability() == "AVX512_BF16" else 8


class Bf16RowsLinear(nn.Module):
    """Inference-only bf16 linear: `kernel_max_rows()` rows or fewer through
    `quietstar_cpu::linear_bf16`, more through F.linear. The weight stays plain (no second,
    pre-packed copy), so a tied LM head still shares the embedding's memory."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.out_features, self.in_features = linear.weight.shape
        self.register_buffer("weight", linear.weight.detach().contiguous(), persistent=False)
        bias = None if linear.bias is None else linear.bias.detach()
        self.register_buffer("bias", bias, persistent=False)
        self.max_rows = kernel_max_rows()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        if flat.shape[0] <= self.max_rows:
            out = torch.ops.quietstar_cpu.linear_bf16(flat, self.weight, self.bias)
        else:
            out = F.linear(flat, self.weight, self.bias)
        return out.view(*x.shape[:-1], self.out_features)


def kernel_fits(linear: nn.Linear) -> bool:
    """The kernel's shape rule: input features a multiple of 16."""
    return linear.weight.shape[1] % 16 == 0


class KernelRMSNorm(nn.Module):
    """An engine model's RMSNorm through `quietstar_cpu::rms_norm` (one call where eager PyTorch
    makes five, about 20 us at one row here), with HF's numerics: normalise in fp32, round to the
    input's dtype, then scale. Under torch.compile it leaves the formula to Inductor, which fuses
    it with its neighbours."""

    def __init__(self, norm: nn.Module):
        super().__init__()
        self.weight, self.eps = norm.weight, norm.eps
        self.reference = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling() or x.dtype != self.weight.dtype:
            return self.reference(x)
        return torch.ops.quietstar_cpu.rms_norm(x, self.weight, self.eps)


def use_kernel_norms(module: nn.Module) -> int:
    """Replace every RMSNorm below `module` (on the CPU, kernels built) by KernelRMSNorm, in
    place; returns how many."""
    from ..llama import RMSNorm
    from . import cpu_ops

    count = 0
    for name, child in module.named_children():
        if isinstance(child, RMSNorm) and child.weight.device.type == "cpu" and cpu_ops():
            setattr(module, name, KernelRMSNorm(child))
            count += 1
        else:
            count += use_kernel_norms(child)
    return count
