"""Thought-aided next-token NLL under controls, scored on the same tokens with the same heads.

Each control changes only what is inside the thought; the mixing head then blends as served
(spec §2.3, s = 0):
- `thought`: L tokens sampled from the model at temperature 1 (as trained and served);
- `no_content`: L = 0, START -> END only;
- `random`: L tokens uniform over the vocabulary, meta tokens excluded;
- `shuffled`: someone else's thoughts: every real position gets the thought sampled for a
  different real position of the batch (a derangement), so the content is real model text
  that is not about this position.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch

from quietstar.parallel import ParallelThoughtAttention, parallel_thought_forward

from .losses import target_logprobs

if TYPE_CHECKING:
    from quietstar import QuietStarModel

CONTENT_CONTROLS = ("random", "shuffled")


class Scored(NamedTuple):
    nll: torch.Tensor  # (B, T-1) thought-aided NLL of x_{i+1}
    w: torch.Tensor  # (B, T-1) mixing weight at position i
    thought_ids: torch.Tensor  # (B, T, L)


@torch.no_grad()
def base_logits(model: QuietStarModel, ids: torch.Tensor, key_mask: torch.Tensor):
    """The plain causal pass (iteration 0 of the parallel forward): (B, T, V) fp32, meta masked."""
    B, T = ids.shape  # (B, T)
    attention = ParallelThoughtAttention(model.backbone.num_layers, key_mask)
    positions = torch.arange(T, device=ids.device).expand(B, T)
    return model.logits(model.hidden(ids, positions, attention))


@torch.no_grad()
def score_thoughts(
    model: QuietStarModel,
    ids: torch.Tensor,
    key_mask: torch.Tensor,
    length: int,
    thought_ids: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Scored:
    """NLL after a thought of `length` tokens at every position: sampled (thought_ids None)
    or forced (B, T, length)."""
    out = parallel_thought_forward(
        model,
        ids,
        num_thought_tokens=length,
        n_talk=1,
        key_mask=key_mask,
        thought_ids=thought_ids,
        generator=generator,
    )
    nll = -target_logprobs(out.mixed_logits[0], ids)
    return Scored(nll, out.mixing_weights[0][:, :-1, 0].float(), out.thought_ids)


def shuffle_thoughts(
    thought_ids: torch.Tensor, key_mask: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """Someone else's thoughts: real position p gets the thought of real position q != p.

    A random cyclic derangement over the real positions of the batch; padding keeps its own."""
    rows, cols = key_mask.nonzero(as_tuple=True)  # the n real positions
    n = len(rows)
    if n < 2:
        raise ValueError("someone else's thoughts need at least two real positions")
    order = torch.randperm(n, generator=generator, device=key_mask.device)
    donor = order.roll(1)  # position order[j] receives the thought of order[j - 1]
    out = thought_ids.clone()
    out[rows[order], cols[order]] = thought_ids[rows[donor], cols[donor]]
    return out
