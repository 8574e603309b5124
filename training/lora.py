"""A small LoRA for the core's `LlamaBackbone`: W x + (alpha/r) B A x on chosen Linear layers.

The backbone's modules and parameter names are left untouched (a forward hook adds the low-rank
path; the factors live in `LoraAdapters`, outside the model), so the core's checkpoint writer
keeps working. `merged(...)` temporarily swaps in W + (alpha/r) B A for saving a plain, servable
checkpoint, then restores the exact original tensors.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch
from torch import nn


class LoraAdapter(nn.Module):
    def __init__(self, linear: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.scale = alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, linear.in_features, dtype=linear.weight.dtype))
        self.lora_b = nn.Parameter(
            torch.zeros(linear.out_features, rank, dtype=linear.weight.dtype)
        )
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # B = 0: the start is the base model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.lora_a.t() @ self.lora_b.t()) * self.scale

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_b @ self.lora_a) * self.scale  # (out, in)


class LoraAdapters(nn.Module):
    """Adapters keyed by the backbone module name ('.' -> '__'), plus the hooks that apply them."""

    def __init__(self, backbone: nn.Module, targets: tuple[str, ...], rank: int, alpha: float):
        super().__init__()
        self.adapters = nn.ModuleDict()
        self._linears: dict[str, nn.Linear] = {}
        for name, module in backbone.named_modules():
            if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in targets:
                key = name.replace(".", "__")
                self.adapters[key] = LoraAdapter(module, rank, alpha)
                self._linears[key] = module
                module.register_forward_hook(self._hook(key))
        if not self.adapters:
            raise ValueError(f"no Linear layer of the backbone is named any of {list(targets)}")

    def _hook(self, key: str) -> Callable[[nn.Linear, tuple, torch.Tensor], torch.Tensor]:
        def add_low_rank(module: nn.Linear, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
            return output + self.adapters[key](inputs[0])

        return add_low_rank

    @contextlib.contextmanager
    def merged(self) -> Iterator[None]:
        """Inside: the targeted weights are W + delta (no hooks should run then)."""
        originals = {}
        try:
            with torch.no_grad():
                for key, linear in self._linears.items():
                    originals[key] = linear.weight.data
                    linear.weight.data = originals[key] + self.adapters[key].delta_weight()
            yield
        finally:
            for key, data in originals.items():
                self._linears[key].weight.data = data
