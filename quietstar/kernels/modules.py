"""Inference-only layers that run through quietstar's CPU kernels (see `quietstar.kernels`)."""

from __future__ import annotations

import sys
import threading

import torch
import torch.nn.functional as F
from torch import nn


def kernel_max_rows(activations: torch.dtype = torch.bfloat16) -> int:
    """How many rows a layer sends through the linear kernels; more take a GEMM (F.linear on the
    weight, or on the int8 weight widened once), whichever measured faster (benchmarks/RESULTS.md,
    "Own CPU kernels"). fp32 activations, and bf16 ones with native bf16 (AVX512-BF16): the GEMM
    beyond 32 rows. bf16 where bf16 GEMMs are emulated (AVX-512 without BF16, AVX2): the kernel
    stays ahead at every size measured (3.2x at 32 rows on the AVX2 class), so it takes them all.
    The portable scalar build: 0, the layers keep PyTorch's kernels."""
    from . import capability

    cap = capability()
    if cap not in ("AVX512_BF16", "AVX512", "AVX2"):
        return 0
    return 32 if activations == torch.float32 or cap == "AVX512_BF16" else sys.maxsize


# int8 weights with fp32 activations: see int8_kernel_max_rows.
INT8_FP32_KERNEL_MAX_ROWS = 64


def int8_kernel_max_rows(activations: torch.dtype) -> int:
    """`kernel_max_rows` for int8 weights. Beyond it, the GEMM multiplies by the weight widened
    for each call, which costs it more than an fp32 weight's GEMM: with fp32 activations the
    kernel measured ahead at 48 rows on the AVX2 class (134 against 228 ms for the default
    model's linears; benchmarks/RESULTS.md, "The LM head tiled, int8 prefill through the
    kernel"), so it takes up to INT8_FP32_KERNEL_MAX_ROWS."""
    rows = kernel_max_rows(activations)
    if activations == torch.float32 and rows > 0:
        return max(rows, INT8_FP32_KERNEL_MAX_ROWS)
    return rows


# fp32 weights: quietstar's kernel measured ahead of oneDNN's pre-packed GEMM up to 64 rows on
# AVX-512 (14.0 against 21.3 ms per model at 1 row, 60.6 against 68.0 at 64), behind at 128
# (benchmarks/RESULTS.md, "Fused decode layers").
FP32_KERNEL_MAX_ROWS = 64


# The kernels' tiled weight layout (cpu_linear.cpp): blocks of TILE_ROWS output channels, each
# stored as K / TILE_COLS chunks of TILE_ROWS x TILE_COLS values, chunk after chunk; the last
# block is padded with zero rows where N is not a multiple of TILE_ROWS.
TILE_ROWS, TILE_COLS = 4, 32


def tile_rows(weight: torch.Tensor) -> torch.Tensor | None:
    """A (N, K) weight in the kernels' tiled layout, (ceil(N / 4), K / 32, 128), or None where K
    is not a multiple of 32. The kernels give the same results, bit for bit, from either layout,
    and read the tiled one front to back: on a 2-core AVX2-only CPU a decode step's linears ran
    1.25x (bf16 values) to 1.35x (int8) faster (benchmarks/RESULTS.md, "Tiled weights"). Up to
    three zero rows pad the last block, so a caller tells the kernel its N (`out_features`, or
    int8's one scale per channel). A new tensor: the kernel's own copy, never one another layer
    shares."""
    n, k = weight.shape
    if k % TILE_COLS:
        return None
    pad = -n % TILE_ROWS
    if pad:
        weight = torch.cat([weight, weight.new_zeros(pad, k)])
    blocks = (n + pad) // TILE_ROWS
    tiles = weight.reshape(blocks, TILE_ROWS, k // TILE_COLS, TILE_COLS)
    return tiles.transpose(1, 2).contiguous().view(blocks, k // TILE_COLS, -1)


def untile_rows(weight: torch.Tensor, out_features: int) -> torch.Tensor:
    """`tile_rows`'s inverse: the first `out_features` rows, (N, K) row-major (a 2-D weight is
    returned as it is)."""
    if weight.dim() == 2:
        return weight
    blocks, chunks, _ = weight.shape
    tiles = weight.view(blocks, chunks, TILE_ROWS, TILE_COLS).transpose(1, 2)
    return tiles.reshape(blocks * TILE_ROWS, chunks * TILE_COLS)[:out_features]


# Prefill and scoring widen each int8 weight for a GEMM, layer after layer: into one buffer per
# thread and dtype, reused, where the weight is at most this many values (every decoder layer of
# the default model; its 28 M-value LM head is widened into a fresh tensor).
WIDEN_SCRATCH_MAX = 1 << 23
_scratch = threading.local()


def widened_int8(q: torch.Tensor, out_features: int, dtype: torch.dtype) -> torch.Tensor:
    """An int8 kernel weight (either layout) as (out_features, K) `dtype` values, exactly, for a
    GEMM. Small ones land in this thread's scratch buffer: valid until the next call here."""
    k = q.shape[1] * (TILE_COLS if q.dim() == 3 else 1)
    size = out_features * k
    if torch.compiler.is_compiling():
        return untile_rows(q, out_features).to(dtype)
    if size > WIDEN_SCRATCH_MAX:
        return torch.ops.quietstar_cpu.widen_int8(q, q.new_empty(out_features, k, dtype=dtype))
    buffers = _scratch.__dict__.setdefault("buffers", {})
    buf = buffers.get(dtype)
    if buf is None or buf.numel() < size:  # grows to the largest layer
        buf = buffers[dtype] = torch.empty(size, dtype=dtype)
    return torch.ops.quietstar_cpu.widen_int8(q, buf[:size].view(out_features, k))


def kernel_rows(weight: torch.Tensor) -> int:
    """The rows a kernel weight stores in either layout, a tiled one's padding included."""
    return weight.shape[0] * (TILE_ROWS if weight.dim() == 3 else 1)


def bf16_copy(weight: torch.Tensor) -> torch.Tensor | None:
    """An fp32 tensor as bf16 where every value is a bf16 value (a model loaded in fp32 from a
    bf16 checkpoint: most Hugging Face ones, and the default model), else None."""
    half = weight.bfloat16()
    return half if torch.equal(half.float(), weight) else None


class RowsLinear(nn.Module):
    """Inference-only bf16 or fp32 linear: up to `max_rows` rows through
    `quietstar_cpu::linear_bf16` / `linear_fp32`, more through `large` (an fp32 weight's oneDNN
    pre-packed layer) or F.linear. `bf16_weight`, an fp32 weight's exact bf16 copy
    (`bf16_copy`), is what the kernel reads in its place, beside the `large` layer: the kernel
    widens each value back exactly and runs the same fp32 FMAs in the same order, so the layer's
    results are those of the fp32 weight, from half the bytes a decode step reads.

    The kernel's weight is tiled (`tile_rows`) where it is the kernel's alone: a bf16 copy, or a
    weight that is not `shared` and that no GEMM reads (beside a `large` layer, or where the
    kernel takes every row). A shared weight (a tied LM head and its embedding) stays as it is."""

    def __init__(
        self,
        linear: nn.Linear,
        large: nn.Module | None = None,
        bf16_weight: torch.Tensor | None = None,
        shared: bool = True,
    ):
        super().__init__()
        self.out_features, self.in_features = linear.weight.shape
        weight = linear.weight.detach().contiguous()
        fp32 = weight.dtype == torch.float32
        if bf16_weight is not None:
            if not fp32 or large is None or bf16_weight.shape != weight.shape:
                raise ValueError(
                    "bf16_weight replaces an fp32 weight of its shape, beside a `large` layer"
                )
            weight = bf16_weight.contiguous()
        self.max_rows = FP32_KERNEL_MAX_ROWS if fp32 else kernel_max_rows(weight.dtype)
        only_kernel = large is not None or self.max_rows == sys.maxsize
        if bf16_weight is not None or (not shared and only_kernel):
            weight = tiled_or_plain(weight)
        self.padded = kernel_rows(weight) != self.out_features  # a tiled weight's last block
        self.register_buffer("weight", weight, persistent=False)
        bias = None if linear.bias is None else linear.bias.detach()
        self.register_buffer("bias", bias, persistent=False)
        ops = torch.ops.quietstar_cpu
        self.kernel = ops.linear_fp32 if weight.dtype == torch.float32 else ops.linear_bf16
        self.large = large

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        if flat.shape[0] <= self.max_rows:
            out = self.kernel(flat, self.weight, self.bias, self.out_features)
        elif self.large is not None:
            out = self.large(flat)
        else:
            out = F.linear(flat, untile_rows(self.weight, self.out_features), self.bias)
        return out.view(*x.shape[:-1], self.out_features)


def tiled_or_plain(weight: torch.Tensor) -> torch.Tensor:
    """`tile_rows(weight)` where the shape allows, else the weight as it is."""
    tiled = tile_rows(weight)
    return weight if tiled is None else tiled


def linear_kernels_serve(weight: torch.Tensor) -> bool:
    """Whether quietstar's linear kernels take a layer with this weight (N, K): on the CPU, built
    here, a build that runs linears (`kernel_max_rows() > 0`), and K a multiple of 16."""
    from . import cpu_ops

    cpu, fits = weight.device.type == "cpu", weight.shape[1] % 16 == 0
    return cpu and fits and kernel_max_rows() > 0 and cpu_ops() is not None


# The norm and RoPE kernels are scalar loops, made for decode steps' few rows; PyTorch's own
# vectorised kernels win on prefill and scoring (thousands of rows).
SMALL_KERNEL_MAX_ROWS = 64


def _leave_to_pytorch(x: torch.Tensor, row_size: int) -> bool:
    """Under torch.compile (Inductor fuses these ops itself) or beyond the decode-sized rows."""
    return torch.compiler.is_compiling() or x.numel() > SMALL_KERNEL_MAX_ROWS * row_size


class KernelRMSNorm(nn.Module):
    """An engine model's RMSNorm through `quietstar_cpu::rms_norm` (one call where eager PyTorch
    makes five, about 20 us at one row here), with HF's numerics: normalise in fp32, round to the
    input's dtype, then scale. Under torch.compile, or on more than SMALL_KERNEL_MAX_ROWS rows, it
    leaves the formula to PyTorch."""

    def __init__(self, norm: nn.Module):
        super().__init__()
        self.weight, self.eps = norm.weight, norm.eps
        self.reference = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _leave_to_pytorch(x, x.shape[-1]) or x.dtype != self.weight.dtype:
            return self.reference(x)
        return torch.ops.quietstar_cpu.rms_norm(x, self.weight, self.eps)


def kernel_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """`quietstar.llama.apply_rope` through `quietstar_cpu::rope` (one call where eager PyTorch
    makes eight; bit-equal in bf16) on up to SMALL_KERNEL_MAX_ROWS rows, outside torch.compile,
    which fuses the formula itself."""
    from ..llama import apply_rope

    if _leave_to_pytorch(x, x.shape[-1] * x.shape[-2]) or cos.dtype != x.dtype:
        return apply_rope(x, cos, sin)
    return torch.ops.quietstar_cpu.rope(x, cos, sin)


def kernel_silu_gate(gate_up: torch.Tensor) -> torch.Tensor:
    """`quietstar.llama.silu_gate` through `quietstar_cpu::silu_mul` (one call and one pass
    where eager PyTorch makes two views, two ops and an intermediate) on up to
    SMALL_KERNEL_MAX_ROWS rows, outside torch.compile. Its exp is quietstar's (within 2 ulp of
    expf, cpu_vec.h) where PyTorch's is Sleef's: the decode step's fused call uses the same op, so
    the two paths stay bitwise equal."""
    from ..llama import silu_gate

    if _leave_to_pytorch(gate_up, gate_up.shape[-1] // 2) or gate_up.dtype not in (
        torch.float32,
        torch.bfloat16,
    ):
        return silu_gate(gate_up)
    return torch.ops.quietstar_cpu.silu_mul(gate_up)


def use_kernel_layers(module: nn.Module) -> int:
    """On the CPU, with the kernels built: every RMSNorm below `module` becomes a KernelRMSNorm,
    every attention rotates through `kernel_rope` and every fused MLP gates through
    `kernel_silu_gate`, in place; returns how many modules changed."""
    from ..llama import MLP, RMSNorm, SelfAttention
    from . import cpu_ops

    if cpu_ops() is None:
        return 0
    count = 0
    for name, child in module.named_children():
        if next(child.parameters(), torch.empty(0)).device.type != "cpu":
            continue
        if isinstance(child, RMSNorm):
            setattr(module, name, KernelRMSNorm(child))
            count += 1
            continue
        if isinstance(child, SelfAttention):
            child.rope = kernel_rope
            count += 1
        if isinstance(child, MLP):
            child.gated = kernel_silu_gate
            count += 1
        count += use_kernel_layers(child)
    return count


class KernelDecoderLayers:
    """Every decoder layer of an engine model's decode step through one
    `quietstar_cpu::decode_layers` call: the ops of `DecoderLayer` on the kernel path, in the
    same order and with the same roundings (bitwise equal results), without the Python between
    them (about 3 ms of a 14 ms step at one row for the default model). Built by `of` where
    every layer runs on the kernels (bf16, fp32, int8 or q4_1 weights on quietstar's, int4 ones
    on PyTorch's; kernel norms); a step takes it when it has few enough rows for every linear's
    kernel (`max_rows`) and runs outside torch.compile."""

    # A projection's entries: weight, scales (int8, int4; None otherwise) and bias (or None).
    PER_LAYER = 14

    def __init__(self, layers, heads: int, eps: float, max_rows: int):
        self.heads, self.eps, self.max_rows = heads, eps, max_rows
        self.weights: list[torch.Tensor | None] = []
        for layer in layers:
            attn, mlp = layer.self_attn, layer.mlp
            self.weights.append(layer.input_layernorm.weight)
            self.weights += _projection(attn.qkv_proj) + _projection(attn.o_proj)
            self.weights.append(layer.post_attention_layernorm.weight)
            self.weights += _projection(mlp.gate_up_proj) + _projection(mlp.down_proj)
        assert len(self.weights) == self.PER_LAYER * len(layers)

    @classmethod
    def of(cls, backbone) -> KernelDecoderLayers | None:
        """For a backbone after `fuse_for_inference`, or None where some layer leaves the kernels
        (fp32 weights pre-packed for oneDNN, int4 output rows padded for PyTorch's packing, a
        bf16, fp32 or q4_1 tiled weight with a padded last block, no kernel build, CUDA)."""
        from ..quant import Int4Linear, Int8Linear, Q4_1Linear
        from . import cpu_ops

        if cpu_ops() is None or not backbone.is_fused:
            return None
        dtype = backbone.norm.weight.dtype
        max_rows, eps = SMALL_KERNEL_MAX_ROWS, set()
        for layer in backbone.layers:
            norms = (layer.input_layernorm, layer.post_attention_layernorm)
            if not all(isinstance(n, KernelRMSNorm) and n.weight.dtype == dtype for n in norms):
                return None
            eps |= {n.eps for n in norms}
            attn, mlp = layer.self_attn, layer.mlp
            for linear in (attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj):
                if isinstance(linear, RowsLinear) and not linear.padded:  # N from the weight
                    max_rows = min(max_rows, linear.max_rows)
                elif isinstance(linear, Int8Linear) and linear.use_kernel:
                    max_rows = min(max_rows, linear.max_rows.get(dtype, 0))
                elif isinstance(linear, Int4Linear) and linear.is_cpu and not linear.padded:
                    pass  # PyTorch's int4 kernel, at any number of rows
                elif isinstance(linear, Q4_1Linear) and not linear.padded:
                    pass  # quietstar's q4_1 kernel, at any number of rows
                else:
                    return None
        if len(eps) != 1 or max_rows < 1:
            return None
        return cls(backbone.layers, backbone.layers[0].self_attn.n_heads, eps.pop(), max_rows)

    def serves(self, x: torch.Tensor) -> bool:
        """Whether a step of these (N, d) rows takes the fused call."""
        return x.shape[0] <= self.max_rows and not torch.compiler.is_compiling()

    def __call__(self, x, cos, sin, k, v, tk, tv, info) -> torch.Tensor:
        """x (N, d) embedded rows, cos/sin (1, N, D), the caches of every layer and the rows'
        attention table (`server.engine.attention`) -> (N, d) before the final norm."""
        head_dim = k.shape[-1]
        return torch.ops.quietstar_cpu.decode_layers(
            x, cos, sin, self.weights, k, v, tk, tv, info, self.heads, self.eps, head_dim**-0.5
        )


def _projection(linear) -> list[torch.Tensor | None]:
    """weight, scales, bias: bf16/fp32/q4_1 (scales None), int8 (fp32 scales), int4 (packed
    codes, scales and zeros)."""
    from ..quant import Int4Linear

    if isinstance(linear, Int4Linear):
        return [linear.packed, linear.scales_zeros, linear.bias]
    return [linear.weight, getattr(linear, "scales_fp32", None), linear.bias]
