"""Batched samplers, one call per step for all rows of a kind: the visible-token sampler
(per-row temperature, top-k, top-p, min-p, presence/frequency penalties) and the thought sampler
(spec §3.5: T = 1 over the full vocab, meta-tokens already masked).

Randomness is counter-based: a row's uniform number is a hash of (sequence seed, draw counter,
lane), so a sequence's samples depend on its seed alone, never on what it is batched with, and
the whole step stays tensor ops (no per-row generator calls; capturable on a device).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from quietstar.sampling import sample_with_uniform

from .sequence import Sequence

MASK32 = 0xFFFFFFFF


def _mix32(x: int) -> int:
    """A 32-bit integer hash with full avalanche (Wellons' `lowbias32` constants)."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & MASK32
    x ^= x >> 15
    x = (x * 0x846CA68B) & MASK32
    return x ^ (x >> 16)


def uniform(seed: int, draw: int, lane: int) -> float:
    """A uniform number in [0, 1) with 24 bits (exact in float32), a pure function of the triple:
    the same seed, draw and lane give the same number in any batch. Plain integers on the host:
    a step draws one per row, and a few dozen tensor ops on a handful of rows cost more than the
    arithmetic (0.2 ms per thought step)."""
    h = _mix32(_mix32(seed & MASK32) ^ ((seed >> 32) & MASK32))
    h = _mix32(_mix32(h ^ (draw & MASK32)) ^ (lane & MASK32))
    return (h >> 8) * (1.0 / (1 << 24))


class SampledTokens(NamedTuple):
    token_ids: list[int]
    logprobs: list[float]  # of each token under the model's distribution (before transforms)
    top_logprobs: list[list[tuple[int, float]] | None]


@dataclass
class SamplingBatch:
    """Per-row visible sampling parameters as (N,) tensors, built from the rows' sequences,
    plus host-side flags that let a step skip transforms no row asks for."""

    temperature: torch.Tensor  # 1 for greedy rows (unused there)
    is_greedy: torch.Tensor  # bool
    top_k: torch.Tensor  # int64, 0: off
    top_p: torch.Tensor
    min_p: torch.Tensor
    presence: torch.Tensor
    frequency: torch.Tensor
    u: torch.Tensor  # each row's uniform draw
    num_top_logprobs: list[int]  # 0: none
    output_ids: list[list[int]] | None  # tokens so far, for the penalties; None: no penalties
    sort_rows: list[int]  # rows with top-k or top-p on (the only ones that need a sort)
    all_greedy: bool
    any_min_p: bool

    @classmethod
    def of(cls, seqs: list[Sequence], vocab_size: int, device) -> SamplingBatch:
        ps = [s.params for s in seqs]
        penalised = any(p.presence_penalty or p.frequency_penalty for p in ps)
        all_greedy = all(p.temperature == 0 for p in ps)
        if all_greedy:  # no row reads u: count the draws, skip the hashing
            for seq in seqs:
                seq.num_draws += 1
            u = torch.zeros(len(seqs), device=device)
        else:
            u = draw_uniforms(seqs, [1] * len(seqs), device)
        # one tensor per dtype, its rows the fields (a small torch.tensor costs more than a view)
        temperature, top_p, min_p, presence, frequency = (
            torch.tensor(
                [
                    [p.temperature or 1.0 for p in ps],
                    [p.top_p for p in ps],
                    [p.min_p for p in ps],
                    [p.presence_penalty for p in ps],
                    [p.frequency_penalty for p in ps],
                ],
                dtype=torch.float32,
                device=device,
            )
        ).unbind(0)
        top_k, greedy = (
            torch.tensor(
                [[p.top_k for p in ps], [p.temperature == 0 for p in ps]],
                dtype=torch.int64,
                device=device,
            )
        ).unbind(0)
        return cls(
            temperature=temperature,
            is_greedy=greedy.bool(),
            top_k=top_k,
            top_p=top_p,
            min_p=min_p,
            presence=presence,
            frequency=frequency,
            u=u,
            num_top_logprobs=[p.logprobs or 0 for p in ps],
            output_ids=[s.output_ids for s in seqs] if penalised else None,
            sort_rows=[i for i, p in enumerate(ps) if 0 < p.top_k < vocab_size or p.top_p < 1],
            all_greedy=all_greedy,
            any_min_p=any(p.min_p > 0 for p in ps),
        )


def sample_visible(logprobs: torch.Tensor, batch: SamplingBatch) -> SampledTokens:
    """logprobs (N, V) fp32: each row's model distribution (already blended) -> one token per
    row, its logprob under that distribution, and the top-N logprobs where asked."""
    scores = _apply_penalties(logprobs, batch)
    tokens = scores.argmax(dim=-1)  # (N,)
    if not batch.all_greedy:
        probs = torch.softmax(scores / batch.temperature[:, None], dim=-1)
        sampled = sample_with_uniform(_filter(probs, batch), batch.u)
        tokens = torch.where(batch.is_greedy, tokens, sampled)
    chosen = logprobs.gather(1, tokens[:, None])[:, 0]
    return SampledTokens(tokens.tolist(), chosen.tolist(), _top_logprobs(logprobs, batch))


def _apply_penalties(logprobs: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    if batch.output_ids is None:
        return logprobs
    rows = [i for i, ids in enumerate(batch.output_ids) for _ in ids]
    cols = [t for ids in batch.output_ids for t in ids]
    counts = torch.zeros_like(logprobs)
    index = (torch.tensor(rows, dtype=torch.int64), torch.tensor(cols, dtype=torch.int64))
    counts.index_put_(tuple(i.to(logprobs.device) for i in index), counts.new_ones(len(rows)), True)
    penalty = batch.presence[:, None] * (counts > 0) + batch.frequency[:, None] * counts
    return logprobs - penalty


def _filter(probs: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """Zero what top-k, min-p and then top-p remove (thresholds on values, so they commute up
    to top-p, which keeps the smallest set of the remaining probabilities reaching top_p)."""
    if batch.any_min_p:
        probs = torch.where(probs >= batch.min_p[:, None] * probs.amax(-1, keepdim=True), probs, 0)
    if not batch.sort_rows:
        return probs
    rows = torch.tensor(batch.sort_rows, device=probs.device)
    sorted_probs, order = probs[rows].sort(dim=-1, descending=True)  # (n, V)
    k = batch.top_k[rows]
    kth = sorted_probs.gather(1, (k - 1).clamp(min=0)[:, None])
    is_top_k = ((k > 0) & (k < probs.shape[-1]))[:, None]
    sorted_probs = torch.where(is_top_k & (sorted_probs < kth), 0, sorted_probs)
    cum = sorted_probs.cumsum(-1)
    drop = cum - sorted_probs > batch.top_p[rows, None] * cum[:, -1:]
    sorted_probs = torch.where(drop, 0, sorted_probs)
    probs = probs.clone()
    probs[rows] = torch.zeros_like(sorted_probs).scatter(1, order, sorted_probs)
    return probs


def _top_logprobs(logprobs: torch.Tensor, batch: SamplingBatch):
    most = max(batch.num_top_logprobs, default=0)
    if not most:
        return [None] * len(logprobs)
    values, ids = (x.tolist() for x in logprobs.topk(most, dim=-1))
    return [
        list(zip(i[:n], v[:n])) if n else None
        for i, v, n in zip(ids, values, batch.num_top_logprobs)
    ]


def sample_thoughts(logits: torch.Tensor, temperature: torch.Tensor | None, u: torch.Tensor):
    """logits (M, V) fp32 with meta-tokens masked (overwritten), temperature (M,) or None for
    T = 1 (spec §3.5), u (M,) -> (M,) token ids. The inverse CDF needs no normalised softmax:
    exp(x - max) in place saves two vocabulary-wide passes per thought row."""
    if temperature is not None:
        logits /= temperature[:, None]
    weights = logits.sub_(logits.amax(dim=-1, keepdim=True)).exp_()
    return sample_with_uniform(weights, u)


def draw_uniforms(seqs: list[Sequence], lanes: list[int], device) -> torch.Tensor:
    """One sampling event per sequence, with `lanes[i]` rows for sequence i: (sum lanes,)
    uniforms. Each sequence's draw counter moves on by one."""
    u = []
    for seq, n in zip(seqs, lanes, strict=True):
        seed = _int64(seq.seed)
        u += [uniform(seed, seq.num_draws, lane) for lane in range(n)]
        seq.num_draws += 1
    return torch.tensor(u, dtype=torch.float32, device=device)


def _int64(x: int) -> int:
    """Any Python int as the signed 64-bit integer with the same low 64 bits."""
    x &= (1 << 64) - 1
    return x - (1 << 64) if x >= 1 << 63 else x
