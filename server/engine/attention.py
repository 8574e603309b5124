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

import math
from dataclasses import dataclass

import torch

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


class DecodeAttention:
    def __init__(self, cache: KVCache, batch: DecodeBatch):
        self.cache, self.b = cache, batch
        dev = batch.prefix_len.device
        self.prefix_mask = torch.arange(batch.max_prefix, device=dev) < batch.prefix_len[:, None]
        self.thought_mask = (
            torch.arange(max(batch.max_thought, 1), device=dev) < batch.thought_len[:, None]
        )
        if batch.max_thought:
            self.joint_mask = torch.cat((self.prefix_mask, self.thought_mask), dim=1)

    def _write(self, layer: int, k, v) -> None:
        b, c = self.b, self.cache
        if len(b.base_rows):
            c.k[layer][b.base_slots, :, b.base_pos] = k[b.base_rows]
            c.v[layer][b.base_slots, :, b.base_pos] = v[b.base_rows]
        if len(b.thought_rows):
            c.tk[layer][b.thought_slots, b.thought_index, :, b.thought_steps] = k[b.thought_rows]
            c.tv[layer][b.thought_slots, b.thought_index, :, b.thought_steps] = v[b.thought_rows]

    def attend(self, layer: int, q, k, v):
        b = self.b
        q, k, v = q[0], k[0], v[0]  # (N, H, D), (N, KVH, D)
        self._write(layer, k, v)
        if b.R == 1 and len(q) == b.num_slots:  # one row per slot: a plain SDPA call
            return self._one_row_per_slot(layer, q)
        H, D = q.shape[1:]
        kvh = k.shape[1]
        g = H // kvh
        packed = len(q) == b.num_slots * b.R  # every (slot, column) has a row: no scatter/gather
        if packed:
            qd = q
        else:
            qd = q.new_zeros(b.num_slots * b.R, H, D)
            qd[b.dense_index] = q
        qd = qd.view(b.num_slots, b.R, kvh, g, D).permute(0, 2, 1, 3, 4)  # (n, KVH, R, G, D)
        scale = 1.0 / math.sqrt(D)
        Kp = self.cache.k[layer, : b.num_slots, :, : b.max_prefix]  # (n, KVH, P, D): a view
        Vp = self.cache.v[layer, : b.num_slots, :, : b.max_prefix]
        sp = torch.matmul(qd.reshape(b.num_slots, kvh, b.R * g, D), Kp.transpose(-1, -2)) * scale
        sp = sp.float().masked_fill(~self.prefix_mask[:, None, None, :], float("-inf"))
        if b.max_thought == 0:
            p = torch.softmax(sp, dim=-1).to(q.dtype)
            out = torch.matmul(p, Vp).view(b.num_slots, kvh, b.R, g, D)
        else:
            out = self._with_thoughts(layer, qd, sp, Vp, scale)
        out = out.permute(0, 2, 1, 3, 4).reshape(b.num_slots * b.R, H, D)
        return (out if packed else out[b.dense_index])[None]

    def _one_row_per_slot(self, layer: int, q):
        """Thoughts off (the slot's prefix), or one thought per slot on a thought-only step (its
        prefix, then its own thought keys; the concatenation copies one prefix per slot, which
        costs less than the general path's extra kernels)."""
        b = self.b
        keys = self.cache.k[layer, : b.num_slots, :, : b.max_prefix]  # (n, KVH, P, D): a view
        values = self.cache.v[layer, : b.num_slots, :, : b.max_prefix]
        mask = self.prefix_mask
        if b.max_thought:
            T = b.max_thought
            keys = torch.cat((keys, self.cache.tk[layer, : b.num_slots, 0, :, :T]), dim=2)
            values = torch.cat((values, self.cache.tv[layer, : b.num_slots, 0, :, :T]), dim=2)
            mask = self.joint_mask
        # Grouped heads as rows of one small matmul per slot: for a single query row this beat
        # the CPU SDPA kernel with a mask and GQA (0.46 ms per layer at batch 8) several times.
        n, kvh, _, D = keys.shape
        qg = q.view(n, kvh, -1, D)  # (n, KVH, G, D)
        scores = torch.matmul(qg, keys.transpose(-1, -2)).float() * (1.0 / math.sqrt(D))
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
        p = torch.softmax(scores, dim=-1).to(q.dtype)
        return torch.matmul(p, values).view(1, n, -1, D)  # (1, n, H, D)

    def _with_thoughts(self, layer: int, qd, sp, Vp, scale):
        b = self.b
        n, kvh, R, g, D = qd.shape
        B = b.base_cols
        Kt = self.cache.tk[layer, :n, : R - B, :, : b.max_thought]  # (n, R-B, KVH, T, D)
        Vt = self.cache.tv[layer, :n, : R - B, :, : b.max_thought]
        st = torch.einsum("nkrgd,nrktd->nkrgt", qd[:, :, B:], Kt).float() * scale
        st = st.masked_fill(~self.thought_mask[:, None, None, None, :], float("-inf"))
        if B:  # base rows see no thoughts
            st = torch.cat((st.new_full((n, kvh, 1, g, b.max_thought), float("-inf")), st), dim=2)
        scores = torch.cat((sp.view(n, kvh, R, g, -1), st), dim=-1)  # (n, KVH, R, G, P + T)
        p = torch.softmax(scores, dim=-1).to(qd.dtype)
        pp, pt = p[..., : b.max_prefix], p[..., b.max_prefix :]
        out = torch.matmul(pp.reshape(n, kvh, R * g, -1), Vp).view(n, kvh, R, g, D)
        thought_out = torch.einsum("nkrgt,nrktd->nkrgd", pt[:, :, B:], Vt)
        if B:
            return torch.cat((out[:, :, :1], out[:, :, 1:] + thought_out), dim=2)
        return out + thought_out
