"""The engine's attention for its two kinds of forward: prefill (prompts packed into one forward,
each into its slot) and
the decode step (one token per row: base rows append to their slot's prefix, thought rows to their
thought branch). Spec §3.4: thoughts see the prefix and themselves only; visible tokens never see
thoughts. Rows are packed for the linear layers and laid out densely as (slot, column) only for
attention: column 0 is the slot's base row, columns 1..K its thought rows.

Dimension letters: N rows, n slots, R columns per slot, H query heads, KVH key/value heads,
G = H / KVH, D head dim, P prefix keys, T thought keys, K thoughts per slot.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from quietstar.llama import sdpa

from .kv_cache import KVCache


class PrefillAttention:
    """Several prompts packed into one row sequence (prompt i in rows bounds[i]..bounds[i+1])
    for the linear layers; per prompt, its K/V are written into its slot at positions
    [0, P_i) and it attends causally to itself only, with the same call as a prompt prefilled
    alone (no padding rows, no cross-prompt mask over all N x N pairs)."""

    def __init__(self, cache: KVCache, slots: list[int], lengths: list[int]):
        self.cache, self.slots, self.lengths = cache, slots, lengths
        self.bounds = [0]
        for n in lengths:
            self.bounds.append(self.bounds[-1] + n)
        self.masks: dict[int, torch.Tensor] = {}  # causal (P, P) mask per prompt length

    def attend(self, layer: int, q, k, v):
        # q (1, N, H, D), k and v (1, N, KVH, D)
        out = []
        for slot, a, b in zip(self.slots, self.bounds, self.bounds[1:]):
            P = b - a
            K, V = self.cache.k[layer, slot], self.cache.v[layer, slot]  # (KVH, max_len, D)
            K[:, :P] = k[0, a:b].transpose(0, 1)
            V[:, :P] = v[0, a:b].transpose(0, 1)
            mask = self.masks.get(P)
            if mask is None:
                mask = torch.ones(P, P, dtype=torch.bool, device=q.device).tril()
                self.masks[P] = mask
            out.append(sdpa(q[:, a:b], k[:, a:b], v[:, a:b], mask))
        return out[0] if len(out) == 1 else torch.cat(out, dim=1)


@dataclass
class DecodeBatch:
    """Index tensors of one decode step over slots 0..num_slots-1 with R columns each; built by
    `model_runner.prepare_decode`. N rows in all (N == num_slots * R when every cell is a row,
    as in a padded step)."""

    num_slots: int
    R: int  # columns per slot: base_cols (0 or 1) + the most thought rows of any slot
    base_cols: int
    max_prefix: int  # prefix keys read per slot
    max_thought: int  # thought keys read per row (0: no thought rows)
    dense_index: torch.Tensor  # (N,) row -> slot * R + column
    base_rows: torch.Tensor  # (Nb,) indices of base rows
    base_slots: torch.Tensor  # (Nb,) slot each writes its K/V to
    base_pos: torch.Tensor  # (Nb,) prefix position each writes
    thought_rows: torch.Tensor  # (Nt,) indices of thought rows
    thought_slots: torch.Tensor  # (Nt,) slot each writes its K/V to
    thought_index: torch.Tensor  # (Nt,) thought k within its slot
    thought_steps: torch.Tensor  # (Nt,) thought KV position each writes
    prefix_len: torch.Tensor  # (num_slots,) prefix length after this step's writes
    thought_len: torch.Tensor  # (num_slots,) thought length after this step's writes (0: none)
    all_base: bool = False  # every row is a base row, in row order (base_rows == arange(N))
    full_prefix: bool = False  # every slot's prefix is max_prefix long (no prefix mask needed)
    # per row, on the host, what quietstar_cpu::decode_attention reads: the slot it reads (its
    # place in the dense (slot, column) layout), that slot's prefix length, its thought column
    # (-1: a base row) and thought length, whether it writes its thought branch (else the
    # prefix), and the slot and position it writes (a padding row writes the scratch slot)
    kernel_rows: list[tuple[int, ...]] = field(default_factory=list)


class DecodeAttention:
    def __init__(self, cache: KVCache, batch: DecodeBatch, use_kernel: bool):
        self.cache, self.b = cache, batch
        self.biases: dict[str, torch.Tensor] = {}  # additive masks, built once per step
        # quietstar's CPU kernel (`cpu_kernel_fits(cache.k)`, which the model runner asks once)
        self.use_kernel = use_kernel

    # What only the PyTorch (SDPA) paths read: built on first use, once per step.

    @functools.cached_property
    def prefix_mask(self) -> torch.Tensor:
        b = self.b
        return torch.arange(b.max_prefix, device=b.prefix_len.device) < b.prefix_len[:, None]

    @functools.cached_property
    def thought_mask(self) -> torch.Tensor:
        b = self.b
        steps = torch.arange(max(b.max_thought, 1), device=b.thought_len.device)
        return steps < b.thought_len[:, None]

    @functools.cached_property
    def thinks(self) -> torch.Tensor:
        return self.b.thought_len > 0  # (num_slots,)

    @functools.cached_property
    def joint_mask(self) -> torch.Tensor:
        return torch.cat((self.prefix_mask, self.thought_mask), dim=1)

    @functools.cached_property
    def destinations(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Where each base and thought row's K/V goes, as row indices into the caches flattened
        to (-1, D): one index_copy_ per cache and layer instead of a four-index scatter."""
        b, c = self.b, self.cache
        _, kvh, max_len, _ = c.k.shape[1:]
        heads = torch.arange(kvh, device=b.prefix_len.device)
        base = (b.base_slots[:, None] * kvh + heads) * max_len + b.base_pos[:, None]
        max_k, t_len = c.tk.shape[2], c.tk.shape[4]
        slot_col = b.thought_slots[:, None] * max_k + b.thought_index[:, None]
        thought = ((slot_col * kvh + heads) * t_len) + b.thought_steps[:, None]
        return base.flatten(), thought.flatten()

    @functools.cached_property
    def row_info(self) -> torch.Tensor:
        """(N, 7) int64: the batch's `kernel_rows`, for the CPU kernel."""
        return torch.tensor(self.b.kernel_rows, dtype=torch.int64).view(-1, 7)

    def _write(self, layer: int, k, v) -> None:
        b, c = self.b, self.cache
        D = k.shape[-1]
        base_dest, thought_dest = self.destinations
        if len(b.base_rows):
            rows = k if b.all_base else k[b.base_rows]
            c.k[layer].view(-1, D).index_copy_(0, base_dest, rows.reshape(-1, D))
            rows = v if b.all_base else v[b.base_rows]
            c.v[layer].view(-1, D).index_copy_(0, base_dest, rows.reshape(-1, D))
        if len(b.thought_rows):
            k_rows, v_rows = k[b.thought_rows].reshape(-1, D), v[b.thought_rows].reshape(-1, D)
            c.tk[layer].view(-1, D).index_copy_(0, thought_dest, k_rows)
            c.tv[layer].view(-1, D).index_copy_(0, thought_dest, v_rows)

    def attend(self, layer: int, q, k, v):
        b = self.b
        q, k, v = q[0], k[0], v[0]  # (N, H, D), (N, KVH, D)
        if self.use_kernel:
            return self._kernel(layer, q, k, v)  # it writes K/V itself
        self._write(layer, k, v)
        if b.R == 1 and len(q) == b.num_slots:  # one row per slot: a plain SDPA call
            return self._one_row_per_slot(layer, q)
        H, D = q.shape[1:]
        n, R, B, kvh = b.num_slots, b.R, b.base_cols, k.shape[1]
        g = H // kvh
        packed = len(q) == n * R  # every (slot, column) has a row: no scatter/gather
        if packed:
            qd = q
        else:
            qd = q.new_zeros(n * R, H, D)
            qd[b.dense_index] = q
        qd = qd.view(n, R, kvh, g, D)
        # Every row of a slot sees the slot's prefix: its R x G query rows per key/value head
        # in one call.
        Kp = self.cache.k[layer, :n, :, : b.max_prefix]  # (n, KVH, P, D): a view
        Vp = self.cache.v[layer, :n, :, : b.max_prefix]
        qp = qd.permute(0, 2, 1, 3, 4).reshape(n, kvh, R * g, D)
        out, lse = sdpa_lse(qp, Kp, Vp, self._bias("prefix", q.dtype))
        out = out.view(n, kvh, R, g, D)
        if b.max_thought and R > B:
            merged = self._add_thoughts(
                layer, qd[:, B:], out[:, :, B:], lse.view(n, kvh, R, g)[:, :, B:]
            )
            out = torch.cat((out[:, :, :B], merged), dim=2) if B else merged
        out = out.permute(0, 2, 1, 3, 4).reshape(n * R, H, D)
        return (out if packed else out[b.dense_index])[None]

    def _bias(self, which: str, dtype: torch.dtype, repeats: int = 1) -> torch.Tensor:
        """The prefix, thought or joint (prefix then thought) mask (rows, keys) as an additive
        (rows * repeats, 1, 1, keys) mask in the query dtype; the same for every layer of the
        step, so made once."""
        bias = self.biases.get(which)
        if bias is None:
            mask = {"prefix": self.prefix_mask, "thought": self.thought_mask}.get(which)
            mask = self.joint_mask if mask is None else mask
            zero = torch.zeros((), dtype=dtype, device=mask.device)
            bias = torch.where(mask, zero, float("-inf"))[:, None, None, :]
            self.biases[which] = bias = bias.repeat_interleave(repeats, dim=0)
        return bias

    def _add_thoughts(self, layer: int, qt, out_p, lse_p):
        """Thought rows also see their own branch: attend it separately and merge with the prefix
        part by log-sum-exp (the split-KV merge), so neither part's keys are copied.
        qt (n, C, KVH, G, D) thought columns; out_p (n, KVH, C, G, D), lse_p (n, KVH, C, G)."""
        b = self.b
        n, C, kvh, g, D = qt.shape
        T = b.max_thought
        Kt = self.cache.tk[layer, :n, :C, :, :T].reshape(n * C, kvh, T, D)
        Vt = self.cache.tv[layer, :n, :C, :, :T].reshape(n * C, kvh, T, D)
        bias = self._bias("thought", qt.dtype, repeats=C)  # C is the same in every layer
        out_t, lse_t = sdpa_lse(qt.reshape(n * C, kvh, g, D), Kt, Vt, bias)
        out_t = out_t.view(n, C, kvh, g, D).transpose(1, 2)
        # a slot that is not thinking has no thought keys: its rows keep the prefix part only
        lse_t = lse_t.view(n, C, kvh, g).transpose(1, 2)
        lse_t = lse_t.masked_fill(~self.thinks[:, None, None, None], float("-inf"))
        lse = torch.logaddexp(lse_p, lse_t)
        w_p, w_t = (lse_p - lse).exp()[..., None], (lse_t - lse).exp()[..., None]
        return (out_p.float() * w_p + out_t.float() * w_t).to(qt.dtype)

    def kernel_caches(self) -> tuple:
        """What quietstar's fused CPU decode layers read and write: the prefix and, when a row
        thinks, the thought caches of every layer, and the rows' table (for a cache the kernel
        serves, `cpu_kernel_fits(cache.k)`)."""
        c = self.cache
        thoughts = (c.tk, c.tv) if self.b.max_thought else (None, None)
        return (c.k, c.v, *thoughts, self.row_info)

    def _kernel(self, layer: int, q, k, v):
        """Every row through quietstar's CPU kernel, which writes the rows' K/V and then reads each
        row's prefix and thought branch in place, up to its own lengths."""
        c = self.cache
        thoughts = (c.tk[layer], c.tv[layer]) if self.b.max_thought else (None, None)
        N, H, D = q.shape
        kvh = k.shape[1]
        out = torch.ops.quietstar_cpu.decode_attention(
            q.view(N, kvh, H // kvh, D),
            k,
            v,
            c.k[layer],
            c.v[layer],
            *thoughts,
            self.row_info,
            D**-0.5,
        )
        return out.view(1, N, H, D)

    def _one_row_per_slot(self, layer: int, q):
        """Thoughts off (the slot's prefix), or one thought per slot on a thought-only step (its
        prefix, then its own thought keys)."""
        b = self.b
        n, D = b.num_slots, q.shape[-1]
        keys = self.cache.k[layer, :n, :, : b.max_prefix]  # (n, KVH, P, D): a view
        values = self.cache.v[layer, :n, :, : b.max_prefix]
        kvh = keys.shape[1]
        T = b.max_thought
        # every slot reads its whole prefix when all have the same length: no mask at all
        bias = None if b.full_prefix else self._bias("prefix", q.dtype)
        if T:  # the concatenation copies one prefix per slot, cheaper than two calls and a merge
            keys = torch.cat((keys, self.cache.tk[layer, :n, 0, :, :T]), dim=2)
            values = torch.cat((values, self.cache.tv[layer, :n, 0, :, :T]), dim=2)
            bias = self._bias("joint", q.dtype)
        # A slot's G query heads per key/value head are G query rows of one SDPA call (every row
        # sees the same keys, so no GQA expansion and no causal mask). Its fused kernel keeps one
        # cost for every prefix length, where bf16 matmuls paid a oneDNN set-up for each new
        # length, i.e. on every step (benchmarks/RESULTS.md, "Decode attention").
        out = F.scaled_dot_product_attention(q.view(n, kvh, -1, D), keys, values, attn_mask=bias)
        return out.view(1, n, -1, D)  # (1, n, H, D)


def cpu_kernel_fits(q: torch.Tensor) -> bool:
    """Whether quietstar's CPU decode attention serves queries like these, or this cache (CPU,
    fp32 or bf16, head dim a multiple of 16, and the kernels built here)."""
    if q.device.type != "cpu" or q.dtype not in (torch.float32, torch.bfloat16) or q.shape[-1] % 16:
        return False
    from quietstar.kernels import cpu_ops

    return cpu_ops() is not None


def sdpa_lse(q, k, v, bias):
    """Attention with its log-sum-exp: q (B, H, M, D), k/v (B, H, S, D), bias additive and
    broadcastable to (B, H, M, S) -> out (B, H, M, D) in q's dtype, lse (B, H, M) fp32. CPU uses
    PyTorch's fused flash kernel, other devices `sdpa_lse_math`. Rows with every key masked give
    an undefined lse: callers mask those."""
    if q.device.type == "cpu":
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, attn_mask=bias)
    return sdpa_lse_math(q, k, v, bias)


def sdpa_lse_math(q, k, v, bias):
    """`sdpa_lse` in plain ops (fp32 scores and softmax)."""
    scores = torch.matmul(q, k.transpose(-1, -2)).float() / math.sqrt(q.shape[-1]) + bias.float()
    lse = torch.logsumexp(scores, dim=-1)
    p = (scores - lse[..., None]).exp().nan_to_num(0.0)
    return torch.matmul(p.to(v.dtype), v), lse
