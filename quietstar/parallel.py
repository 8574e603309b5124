"""Tokenwise-parallel thought forward (spec §3.3–§3.4): a thought at every position at once.

Iteration 0 is the ordinary causal pass. Iteration k >= 1 feeds one token per position (START,
the sampled thought tokens, END, then the teacher-forced true tokens) at position id i + k.
A query of iteration k sees the real tokens x_<=i and exactly one key per earlier iteration (its
own branch): the "causal | diag | ... | diag" mask, computed here without materialising the
diagonal blocks (the paper appendix's elementwise trick). Thoughts never see other positions'
thoughts; real tokens never see thoughts. The trainer (with gradients) and the engine's scoring
(without) both call `parallel_thought_forward`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .llama import causal_mask, sdpa
from .model import END_THOUGHT, START_THOUGHT, QuietStarModel
from .sampling import sample_categorical


class ParallelThoughtAttention:
    """Keys: block 0 = the real tokens (causal, padding masked); blocks 1..k = one key each.

    One object per pass: iteration 0 is the causal pass, `next_pass()` gives iteration k + 1 over
    the same key store. A pass's `attend` is idempotent: run again (activation checkpointing
    recomputes a layer in backward) it uses its own new k/v and the stored earlier ones, so the
    re-run repeats the first run's operations exactly and leaves the store as it was.
    """

    def __init__(
        self,
        num_layers: int,
        key_mask: torch.Tensor | None,
        iteration: int = 0,
        keys: list[list[tuple[torch.Tensor, torch.Tensor]]] | None = None,
    ):
        self.key_mask = key_mask  # (B, T) bool
        self.iteration = iteration
        # keys[layer][k] = (k, v) of iteration k, each (B, T, KVH, D)
        self.keys = keys if keys is not None else [[] for _ in range(num_layers)]

    def next_pass(self) -> ParallelThoughtAttention:
        return ParallelThoughtAttention(
            len(self.keys), self.key_mask, self.iteration + 1, self.keys
        )

    def attend(self, layer: int, q, k, v):
        stored = self.keys[layer]
        if len(stored) == self.iteration:
            stored.append((k, v))
        elif len(stored) < self.iteration:
            raise RuntimeError(
                f"layer {layer}: pass {self.iteration} ran before pass {len(stored)}"
            )
        if self.iteration == 0:
            return sdpa(q, k, v, causal_mask(q.shape[1], self.key_mask, q.device))
        return self._branch_attend(stored[0], stored[1 : self.iteration] + [(k, v)], q)

    def _branch_attend(self, block0, diag, q):
        k0, v0 = block0  # (B, T, KVH, D)
        kd = torch.stack([k for k, _ in diag], dim=1)  # (B, n, T, KVH, D)
        vd = torch.stack([v for _, v in diag], dim=1)
        B, T, H, D = q.shape
        kvh = k0.shape[2]
        qg = q.view(B, T, kvh, H // kvh, D)  # (B, T, KVH, G, D)
        scale = 1.0 / math.sqrt(D)
        s0 = torch.einsum("bikgd,bjkd->bkgij", qg, k0) * scale  # (B, KVH, G, T, T)
        allowed = causal_mask(T, self.key_mask, q.device)  # (T, T) or (B, 1, T, T)
        if allowed.dim() == 4:
            allowed = allowed[:, :, None]  # (B, 1, 1, T, T) against (B, KVH, G, T, T)
        s0 = s0.masked_fill(~allowed, float("-inf"))
        sd = torch.einsum("bikgd,bnikd->bkgin", qg, kd) * scale  # (B, KVH, G, T, n)
        p = torch.softmax(torch.cat((s0.float(), sd.float()), dim=-1), dim=-1).to(q.dtype)
        p0, pd = p[..., :T], p[..., T:]
        out = torch.einsum("bkgij,bjkd->bikgd", p0, v0) + torch.einsum("bkgin,bnikd->bikgd", pd, vd)
        return out.reshape(B, T, H, D)


@dataclass
class ParallelThoughtOutput:
    h_base: torch.Tensor  # (B, T, d)
    base_logits: torch.Tensor  # (B, T, V) fp32, meta masked
    thought_ids: torch.Tensor  # (B, T, L)
    thought_logprobs: torch.Tensor | None  # (B, T, L) at the reinforce temperature
    mixed_logits: list[torch.Tensor] = field(default_factory=list)  # per talk offset s: (B, T, V)
    mixing_weights: list[torch.Tensor] = field(default_factory=list)  # per s: (B, T, 1)


def parallel_thought_forward(
    model: QuietStarModel,
    ids: torch.Tensor,
    num_thought_tokens: int,
    n_talk: int = 1,
    key_mask: torch.Tensor | None = None,
    thought_ids: torch.Tensor | None = None,
    temperature: float = 1.0,
    reinforce_temperature: float | None = None,
    generator: torch.Generator | None = None,
) -> ParallelThoughtOutput:
    """ids (B, T). mixed_logits[s][:, i] predicts x_{i+s+1} after the thought at position i.

    `thought_ids` (B, T, L) forces the thoughts (tests); else they are sampled at `temperature`
    from the masked logits (spec §3.5). With `reinforce_temperature`, the log-probs of the sampled
    tokens under softmax(logits / reinforce_temperature) are returned, with gradients (spec §3.6).
    """
    B, T = ids.shape
    attention = ParallelThoughtAttention(model.backbone.num_layers, key_mask)
    positions = torch.arange(T, device=ids.device).expand(B, T)
    h_base = model.hidden(ids, positions, attention)  # iteration 0
    out = ParallelThoughtOutput(h_base, model.logits(h_base), ids.new_zeros(B, T, 0), None)
    step_input = torch.full_like(ids, START_THOUGHT)
    sampled, logprobs = [], []
    for k in range(1, num_thought_tokens + 2 + n_talk):
        attention = attention.next_pass()
        h = model.hidden(step_input, positions + k, attention)
        if k <= num_thought_tokens:  # output of START / c_{k-1} gives c_k
            logits = model.logits(h)
            c = _next_thought(logits, k, thought_ids, temperature, generator)
            sampled.append(c)
            if reinforce_temperature is not None:
                logp = torch.log_softmax(logits / reinforce_temperature, dim=-1)
                logprobs.append(logp.gather(-1, c[..., None]).squeeze(-1))
            step_input = c
        elif k == num_thought_tokens + 1:  # output unused; END is forced next
            step_input = torch.full_like(ids, END_THOUGHT)
        else:
            s = k - num_thought_tokens - 2  # talk offset: this output predicts x_{i+s+1}
            base = _shift_left(h_base, s)
            mixed, w = model.mix(base, h)
            out.mixed_logits.append(mixed)
            out.mixing_weights.append(w)
            step_input = _shift_left(ids, s + 1)  # teacher forcing: true x_{i+s+1}
    if sampled:
        out.thought_ids = torch.stack(sampled, dim=-1)
    if logprobs:
        out.thought_logprobs = torch.stack(logprobs, dim=-1)
    return out


def _next_thought(logits, k, forced, temperature, generator):
    if forced is not None:
        return forced[..., k - 1]
    with torch.no_grad():
        scaled = logits.float()
        if temperature != 1.0:  # x / 1 == x: no vocabulary-wide pass at the spec's T = 1
            scaled = scaled / temperature
        return sample_categorical(torch.softmax(scaled, dim=-1), generator)


def _shift_left(x: torch.Tensor, s: int) -> torch.Tensor:
    """x[:, i] <- x[:, i + s]; the wrapped tail is zero and is never scored."""
    if s == 0:
        return x
    return torch.cat((x[:, s:], torch.zeros_like(x[:, :s])), dim=1)


def next_token_logprobs(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log p(x_{i+1}) at every position i < T-1: logits (B, T, V), ids (B, T) -> (B, T-1)."""
    return F.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
