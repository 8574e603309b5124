"""Samplers: the visible-token sampler (temperature, top-k, top-p, min-p, penalties, per-request
generator) and the thought sampler (spec §3.5: T = 1 over the full vocab, meta-tokens masked)."""

from __future__ import annotations

from typing import NamedTuple

import torch

from quietstar.sampling import sample_categorical

from .sampling_params import SamplingParams


class Sampled(NamedTuple):
    token_id: int
    logprob: float
    top_logprobs: list[tuple[int, float]] | None


def sample_visible(
    logprobs: torch.Tensor,
    params: SamplingParams,
    generator: torch.Generator,
    counts: dict[int, int],
) -> Sampled:
    """logprobs (V,): the model's distribution (already blended). Returns the token, its logprob
    under that distribution, and the top-N logprobs when asked."""
    scores = _apply_penalties(logprobs, params, counts)
    if params.temperature == 0:
        token = int(scores.argmax())
    else:
        token = int(sample_categorical(_filtered_probs(scores, params), generator))
    top = None
    if params.logprobs is not None and params.logprobs > 0:
        values, ids = logprobs.topk(params.logprobs)
        top = list(zip(ids.tolist(), values.tolist()))
    return Sampled(token, float(logprobs[token]), top)


def _apply_penalties(logprobs, params: SamplingParams, counts: dict[int, int]):
    if not counts or (params.presence_penalty == 0 and params.frequency_penalty == 0):
        return logprobs
    ids = torch.tensor(list(counts), device=logprobs.device)
    freq = torch.tensor(list(counts.values()), dtype=logprobs.dtype, device=logprobs.device)
    out = logprobs.clone()
    out[ids] -= params.presence_penalty + params.frequency_penalty * freq
    return out


def _filtered_probs(scores: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    probs = torch.softmax(scores / params.temperature, dim=-1)
    if params.top_k > 0 and params.top_k < probs.shape[-1]:
        kth = probs.topk(params.top_k).values[-1]
        probs = torch.where(probs >= kth, probs, 0.0)
    if params.min_p > 0:
        probs = torch.where(probs >= params.min_p * probs.max(), probs, 0.0)
    if params.top_p < 1:
        sorted_probs, order = probs.sort(descending=True)
        cum = sorted_probs.cumsum(-1)
        drop = cum - sorted_probs > params.top_p * cum[-1]  # keep the smallest set reaching top_p
        probs = probs.scatter(0, order[drop], 0.0)
    return probs


def sample_thoughts(
    logits: torch.Tensor, temperature: float, generator: torch.Generator
) -> list[int]:
    """logits (K, V) fp32 with meta-tokens masked -> one thought token per row."""
    probs = torch.softmax(logits / temperature, dim=-1)
    return sample_categorical(probs, generator).tolist()
