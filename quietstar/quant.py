"""Quantisation of the backbone's linear layers: weight-only int8 (per output channel) and int4
(grouped), and q4_1 (llama.cpp's Q4_1 blocks with 8-bit activations).

Activations stay in the compute dtype (`--dtype auto`: fp32 for int8 where bf16 matmuls are
emulated and quietstar's kernel serves, bf16 otherwise; `quietstar.dtypes.resolve_dtype`). int8
matmuls run quietstar's CPU kernel where it builds (`quietstar.kernels`: it streams the weights,
stored tiled, faster than PyTorch's at a few rows, and takes fp32 activations without a scalar
path), else PyTorch's `aten._weight_int8pack_mm`; int4 ones run PyTorch's tinygemm-layout
kernels (`aten._weight_int4pack_mm[_for_cpu]`, the ones gpt-fast and torchao call). q4_1 is the
format the default model ships in (its GGUF's blocks are reproduced bit for bit) and runs
llama.cpp's arithmetic on quietstar's CPU kernel (`Q4_1Linear`): each activation row is rounded to
8 bits per 32 values, so its results differ from the weights' exact product, unlike the
weight-only modes; in exchange a weight reads 0.625 bytes and a block's products are integer dot
products, the fastest of the modes measured on an AVX2 CPU (benchmarks/RESULTS.md). The mixing
head and the start/end vectors stay fp32 (they are tiny and feed the mixing weight w directly);
the embedding table stays in the compute dtype (a lookup reads one row). The LM head is int8 in
every mode: an int4 head cost the default model 0.035 nats of held-out NLL for 6 % of batch-1
speed (benchmarks/RESULTS.md), and the GGUF it ships as keeps it at 8 bits too.
A quantised model is inference-only: its projections are fused and it has no weight parameters.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .kernels.modules import (
    TILE_ROWS,
    int8_kernel_max_rows,
    linear_kernels_serve,
    tiled_or_plain,
    untile_rows,
    use_kernel_layers,
    widened_int8,
)

log = logging.getLogger(__name__)

QUANT_MODES = ("int8", "int4", "q4_1")
INT4_GROUP_SIZES = (32, 64, 128, 256)  # what both int4 kernels accept
Q4_1_BLOCK = 32  # values per Q4_1 block (llama.cpp's QK4_1)


@dataclass(frozen=True)
class QuantSpec:
    mode: str  # "int8", "int4" or "q4_1"
    group_size: int = 32  # int4 only: input columns sharing one scale and zero (q4_1: 32)

    def __post_init__(self):
        if self.mode not in QUANT_MODES:
            raise ValueError(f"quantize must be one of {QUANT_MODES}, got {self.mode!r}")
        if self.mode == "int4" and self.group_size not in INT4_GROUP_SIZES:
            raise ValueError(
                f"int4 group size must be one of {INT4_GROUP_SIZES}, got {self.group_size}"
            )
        if self.mode == "q4_1" and self.group_size != Q4_1_BLOCK:
            raise ValueError(
                f"q4_1 blocks hold {Q4_1_BLOCK} values, got group size {self.group_size} "
                "(the group size is int4's)"
            )

    def __str__(self) -> str:
        return f"int4 (group {self.group_size})" if self.mode == "int4" else self.mode


# ---------------------------------------------------------------- the number formats


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel: w (N, K) -> q int8 (N, K), scales fp32 (N,); w ~ q * s."""
    w = w.float()
    scales = w.abs().amax(dim=1).clamp(min=1e-12) / 127
    q = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scales


def dequantize_int8(q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    return q.float() * scales.float()[:, None]


def quantize_int4(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric per group of `group_size` input columns: w (N, K) -> q uint8 in [0, 15] (N, K),
    scales_zeros fp32 (K / G, N, 2) with w ~ (q - 8) * scale + zero (the kernels' layout; a GGUF
    Q4_1 block w = q * d + m is scale = d, zero = m + 8 d)."""
    N, K = w.shape
    g = w.float().reshape(N, K // group_size, group_size)
    lo, hi = g.amin(dim=-1), g.amax(dim=-1)  # (N, K / G)
    scale = (hi - lo).clamp(min=1e-12) / 15
    q = torch.round((g - lo[..., None]) / scale[..., None]).clamp(0, 15).to(torch.uint8)
    zero = lo + 8 * scale
    return q.reshape(N, K), torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous()


def dequantize_int4(q: torch.Tensor, scales_zeros: torch.Tensor, group_size: int) -> torch.Tensor:
    N, K = q.shape
    scale, zero = scales_zeros.float().transpose(0, 1).unbind(-1)  # (N, K / G) each
    g = (q.reshape(N, K // group_size, group_size).float() - 8) * scale[..., None]
    return (g + zero[..., None]).reshape(N, K)


def quantize_q4_1(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """llama.cpp's Q4_1 per block of 32 input columns: w (N, K) -> codes uint8 in [0, 15] (N, K),
    scales d and minimums m fp16 (N, K / 32), w ~ q d + m with d = (max - min) / 15, m = min, both
    rounded to fp16 before the codes are chosen (so that the codes fit the stored values)."""
    n, k = w.shape
    g = w.float().reshape(n, k // Q4_1_BLOCK, Q4_1_BLOCK)
    lo, hi = g.amin(dim=-1), g.amax(dim=-1)
    d, m = ((hi - lo) / 15).half(), lo.half()
    if not (torch.isfinite(d).all() and torch.isfinite(m).all()):
        raise ValueError("q4_1: a block's range does not fit fp16 (|w| beyond 65504)")
    step = d.float()[..., None]
    q = torch.where(step > 0, (g - m.float()[..., None]) / step.clamp(min=1e-30), 0)
    return q.round().clamp(0, 15).to(torch.uint8).reshape(n, k), d, m


def pack_q4_1(q: torch.Tensor, d: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """`quantize_q4_1`'s codes, scales and minimums in the kernel's layout (cpu_linear.cpp):
    (ceil(N / 4), K / 32, 80) uint8, the last block padded with zero channels."""
    n, k = q.shape
    pad = -n % TILE_ROWS
    if pad:
        q = torch.cat([q, q.new_zeros(pad, k)])
        d, m = (torch.cat([t, t.new_zeros(pad, t.shape[1])]) for t in (d, m))
    blocks, chunks = (n + pad) // TILE_ROWS, k // Q4_1_BLOCK
    g = q.reshape(blocks, TILE_ROWS, chunks, Q4_1_BLOCK)
    nibbles = g[..., :16] | g[..., 16:] << 4  # byte i: column i low, column i + 16 high
    nibbles = nibbles.transpose(1, 2).reshape(blocks, chunks, TILE_ROWS * 16)

    def halves(t):  # (N, chunks) fp16 -> (blocks, chunks, 8) bytes, channel after channel
        t = t.reshape(blocks, TILE_ROWS, chunks).transpose(1, 2).contiguous()
        return t.view(torch.uint8).reshape(blocks, chunks, 2 * TILE_ROWS)

    return torch.cat([nibbles, halves(d), halves(m)], dim=-1).contiguous()


def unpack_q4_1(packed: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`pack_q4_1`'s inverse: codes (N, K), scales and minimums (N, K / 32)."""
    blocks, chunks, _ = packed.shape
    nib = packed[..., : TILE_ROWS * 16].reshape(blocks, chunks, TILE_ROWS, 16)
    q = torch.cat([nib & 0x0F, nib >> 4], dim=-1).transpose(1, 2)
    q = q.reshape(blocks * TILE_ROWS, chunks * Q4_1_BLOCK)[:n]

    def halves(lo):
        t = packed[..., lo : lo + 2 * TILE_ROWS].contiguous().view(torch.float16)
        return t.transpose(1, 2).reshape(blocks * TILE_ROWS, chunks)[:n]

    return q, halves(TILE_ROWS * 16), halves(TILE_ROWS * 18)


def dequantize_q4_1(q: torch.Tensor, d: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    n, k = q.shape
    g = q.reshape(n, k // Q4_1_BLOCK, Q4_1_BLOCK).float() * d.float()[..., None]
    return (g + m.float()[..., None]).reshape(n, k)


def quantize_activations_q8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What the Q4_1 kernel does to each activation row, in PyTorch (for tests and reference):
    x (M, K) fp32 -> codes (M, K) int8 = round(x / e), e = max |x| / 127 per block of 32, and the
    blocks' scales e and sums of x, (M, K / 32) each."""
    b = x.float().reshape(x.shape[0], -1, Q4_1_BLOCK)
    e = b.abs().amax(dim=-1) / 127
    inv = torch.where(e > 0, 1 / e, torch.zeros_like(e))
    codes = torch.round(b * inv[..., None]).to(torch.int8).reshape(x.shape)
    return codes, e, b.sum(dim=-1)


def linear_q4_1_reference(x: torch.Tensor, q: torch.Tensor, d: torch.Tensor, m: torch.Tensor):
    """The Q4_1 kernel's product in float64, for tests: x (M, K) with `quantize_q4_1`'s codes,
    scales and minimums -> (M, N), the sum over blocks of d e (q . a) + m (the block's sum of x),
    the dot products exact."""
    codes, e, s = quantize_activations_q8(x)
    rows, n = x.shape[0], q.shape[0]
    dots = torch.einsum(
        "mcb,ncb->mnc",
        codes.reshape(rows, -1, Q4_1_BLOCK).double(),
        q.reshape(n, -1, Q4_1_BLOCK).double(),
    )
    out = (dots * d.double()[None] * e.double()[:, None]).sum(-1)
    return out + (s.double()[:, None] * m.double()[None]).sum(-1)


# ---------------------------------------------------------------- the layers


class Int8Linear(nn.Module):
    """y = (x @ q^T) * s + b, accumulated in fp32 and returned in x's dtype: on CPU through
    quietstar's kernel where it builds (`quietstar.kernels`; fast for bf16 and fp32 activations),
    else through aten._weight_int8pack_mm."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        q, scales = quantize_int8(weight)
        self.use_kernel = linear_kernels_serve(weight)
        if self.use_kernel:  # the kernel's layout where the shape allows
            q = tiled_or_plain(q)
        self.register_buffer("weight", q)  # (N, K) int8, or tiled for the kernel
        self.register_buffer("scales", scales.to(dtype))  # (N,), what the aten kernel takes
        self.register_buffer("scales_fp32", scales)  # what quietstar's kernel takes
        self.register_buffer("bias", None if bias is None else bias.detach().to(dtype))
        # rows through the kernel per activation dtype; beyond, the weight is widened once and
        # multiplied by a GEMM (prefill, scoring)
        self.max_rows = {dt: int8_kernel_max_rows(dt) for dt in (torch.bfloat16, torch.float32)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        if self.use_kernel and flat.shape[0] <= self.max_rows.get(flat.dtype, 0):
            out = torch.ops.quietstar_cpu.linear_int8(
                flat, self.weight, self.scales_fp32, self.bias
            )
        elif self.use_kernel:
            widened = widened_int8(self.weight, self.out_features, flat.dtype)
            out = F.linear(flat, widened) * self.scales.to(flat.dtype)
            if self.bias is not None:
                out = out + self.bias
        else:
            out = torch.ops.aten._weight_int8pack_mm(flat, self.weight, self.scales)
            if self.bias is not None:
                out = out + self.bias
        return out.view(*x.shape[:-1], self.out_features)

    def dequantized(self) -> torch.Tensor:
        return dequantize_int8(untile_rows(self.weight, self.out_features), self.scales)


class Int4Linear(nn.Module):
    """Grouped asymmetric int4 through the device's tinygemm-layout kernel. Output rows are padded
    to a multiple of 16 (the CPU packing's requirement) and cut off again after the matmul."""

    def __init__(
        self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype, group_size: int
    ):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.group_size = group_size
        self.is_cpu = weight.device.type == "cpu"
        check_int4_kernel(weight.device, dtype)
        if self.in_features % group_size:
            raise ValueError(
                f"int4 group size {group_size} does not divide a layer's {self.in_features} input "
                f"features; choose one of {[g for g in INT4_GROUP_SIZES if self.in_features % g == 0]}"
            )
        pad = -self.out_features % 16
        self.padded = pad > 0
        w = torch.cat([weight, weight.new_zeros(pad, self.in_features)]) if pad else weight
        q, scales_zeros = quantize_int4(w, group_size)
        self.register_buffer("packed", _pack_int4(q))
        self.register_buffer("scales_zeros", scales_zeros.to(dtype))  # (K / G, N, 2)
        self.register_buffer("bias", None if bias is None else bias.detach().to(dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._matmul(x.reshape(-1, self.in_features))
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)

    def _matmul(self, flat: torch.Tensor) -> torch.Tensor:
        """flat (M, K) -> (M, N) without the bias."""
        mm = (
            torch.ops.aten._weight_int4pack_mm_for_cpu
            if self.is_cpu
            else torch.ops.aten._weight_int4pack_mm
        )
        return mm(flat, self.packed, self.group_size, self.scales_zeros)[:, : self.out_features]

    def dequantized(self) -> torch.Tensor:
        """The weight the kernel multiplies by, (N, K) fp32: the kernel applied to the identity."""
        eye = torch.eye(self.in_features, dtype=self.scales_zeros.dtype, device=self.packed.device)
        return self._matmul(eye).float().T


class Q4_1Linear(nn.Module):
    """4-bit weights in llama.cpp's Q4_1 blocks, multiplied as llama.cpp does on the CPU: each
    activation row rounded to 8 bits per 32 values, integer dot products per block, scaled in
    fp32 (`quietstar_cpu::linear_q4_1`, the same arithmetic at any number of rows). CPU only,
    on quietstar's kernels (`check_q4_1_kernel`)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        check_q4_1_kernel(weight.device)
        if self.in_features % Q4_1_BLOCK:
            raise ValueError(
                f"q4_1 needs input features in blocks of {Q4_1_BLOCK}; a layer has "
                f"{self.in_features}"
            )
        self.padded = self.out_features % TILE_ROWS != 0
        self.use_kernel = True
        self.register_buffer("weight", pack_q4_1(*quantize_q4_1(weight)))
        self.register_buffer("bias", None if bias is None else bias.detach().to(dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        out = torch.ops.quietstar_cpu.linear_q4_1(flat, self.weight, self.bias, self.out_features)
        return out.view(*x.shape[:-1], self.out_features)

    def dequantized(self) -> torch.Tensor:
        return dequantize_q4_1(*unpack_q4_1(self.weight, self.out_features))


def check_q4_1_kernel(device: torch.device) -> None:
    """Raise ValueError naming the device where quietstar's Q4_1 kernel does not run."""
    from .kernels import capability, cpu_ops

    if device.type != "cpu":
        raise ValueError(
            f"no q4_1 kernel for device {device}: it runs on the CPU only; use --quantize int8 "
            "or int4 there"
        )
    if cpu_ops() is None:
        raise ValueError(
            f"q4_1 runs on quietstar's CPU kernels, which are not available here (CPU capability "
            f"{capability()}; see the log for why); use --quantize int8 or int4"
        )


def _pack_int4(q: torch.Tensor) -> torch.Tensor:
    if q.device.type == "cpu":
        return torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 1)
    nibbles = (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8)  # (N, K / 2), high nibble first
    # the CUDA layout tiles K by 16 * innerKTiles (2, 4 or 8): the widest that divides K
    # (the group size, >= 32, divides K, so 2 always does)
    inner_k_tiles = next(t for t in (8, 4, 2) if q.shape[1] % (16 * t) == 0)
    return torch.ops.aten._convert_weight_to_int4pack(nibbles.contiguous(), inner_k_tiles)


def check_int4_kernel(device: torch.device, dtype: torch.dtype) -> None:
    """Raise ValueError naming the device when PyTorch has no int4 weight-only kernel for it."""
    if device.type == "cpu":
        if not hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"):
            raise ValueError(f"this PyTorch ({torch.__version__}) has no int4 kernel for the CPU")
        return
    if device.type == "cuda":
        if dtype != torch.bfloat16:
            raise ValueError(f"int4 on {device} needs dtype bfloat16 (the kernel's), got {dtype}")
        if torch.cuda.get_device_capability(device) < (8, 0):
            name = torch.cuda.get_device_name(device)
            raise ValueError(
                f"no int4 kernel for {device} ({name}): it needs compute capability 8.0+"
            )
        return
    raise ValueError(f"no int4 weight-only kernel for device {device}; use --quantize int8 or none")


# ---------------------------------------------------------------- the model


def quantize_model(model, spec: QuantSpec) -> None:
    """Fuse the backbone's projections and replace every linear of the backbone by its quantised
    form (the LM head by int8), in place. The mixing head and meta vectors stay fp32."""
    backbone = model.backbone
    if backbone.is_fused:
        raise ValueError("quantise before fusing: this model's linears are already fused/packed")
    start = time.perf_counter()
    dtype = model.dtype
    if spec.mode == "int4":  # refuse before changing anything
        check_int4_kernel(model.device, dtype)
    if spec.mode == "q4_1":
        check_q4_1_kernel(model.device)
    for layer in backbone.layers:
        layer.self_attn.fuse()
        layer.mlp.fuse()
    count = _replace_linears(backbone, spec, dtype)
    on_pytorch = [
        m for m in quantized_linears(model).values() if not getattr(m, "use_kernel", False)
    ]
    if model.device.type == "cpu" and dtype == torch.float32 and on_pytorch:
        # measured (torch 2.13, 3072x576): 1.2 ms at 1 row vs 0.05 ms with bf16 activations
        log.warning(
            "%s with float32 activations runs PyTorch's scalar CPU path in %d of %d layers "
            "(10-100x slower than bfloat16 activations); use dtype bfloat16 for speed",
            spec,
            len(on_pytorch),
            count,
        )
    use_kernel_layers(backbone)
    backbone.is_fused = True
    model.quantization = spec
    log.info("quantised %d linears to %s in %.1f s", count, spec, time.perf_counter() - start)
    if spec.mode == "int4" and model.device.type == "cpu" and spec.group_size == Q4_1_BLOCK:
        log.info(
            "int4 runs PyTorch's kernel on the CPU; --quantize q4_1 stores the same 4-bit codes "
            "and decodes faster on quietstar's kernel, with activations rounded to 8 bits "
            "(benchmarks/RESULTS.md)"
        )


def _replace_linears(module: nn.Module, spec: QuantSpec, dtype: torch.dtype) -> int:
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear):
            weight, bias = child.weight.detach(), child.bias
            if spec.mode == "int8" or name == "lm_head":
                new = Int8Linear(weight, bias, dtype)
            elif spec.mode == "q4_1":
                new = Q4_1Linear(weight, bias, dtype)
            else:
                new = Int4Linear(weight, bias, dtype, spec.group_size)
            setattr(module, name, new)
            count += 1
        else:
            count += _replace_linears(child, spec, dtype)
    return count


QuantLinear = Int8Linear | Int4Linear | Q4_1Linear


def quantized_linears(model) -> dict[str, QuantLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}
