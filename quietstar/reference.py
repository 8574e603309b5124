"""Slow, obviously-correct references (no cache) that the engine and trainer are tested against.

`thought_aided_logits` runs the backbone on the explicit sequence (prefix, START vector, thought
tokens, END vector) and mixes (spec §4.4 written out). `official_style_*` reproduce the cost model
of the official inference (spec §4.1): every new token recomputes the whole sequence with a
thought at every position.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .llama import DenseCausalAttention
from .model import END_THOUGHT, START_THOUGHT, QuietStarModel
from .parallel import parallel_thought_forward


class ThoughtAided(NamedTuple):
    logits: torch.Tensor  # (V,) fp32, meta masked: blended next-token logits
    base_logits: torch.Tensor  # (V,)
    w: torch.Tensor  # (1,)


def _hidden(model: QuietStarModel, ids: list[int]) -> torch.Tensor:
    x = torch.tensor([ids], device=model.device)
    positions = torch.arange(len(ids), device=model.device)[None]
    return model.hidden(x, positions, DenseCausalAttention())[0]  # (T, d)


@torch.no_grad()
def base_logits(model: QuietStarModel, prefix_ids: list[int]) -> torch.Tensor:
    return model.logits(_hidden(model, prefix_ids)[-1])


@torch.no_grad()
def thought_aided_logits(
    model: QuietStarModel, prefix_ids: list[int], thought_ids: list[int]
) -> ThoughtAided:
    seq = list(prefix_ids) + [START_THOUGHT] + list(thought_ids) + [END_THOUGHT]
    h = _hidden(model, seq)
    h_base, h_post = h[len(prefix_ids) - 1], h[-1]
    logits, w = model.mix(h_base, h_post)
    return ThoughtAided(logits, model.logits(h_base), w)


@torch.no_grad()
def score_per_position(
    model: QuietStarModel, ids: list[int], thoughts: list[list[int]]
) -> torch.Tensor:
    """log p(ids[i+1] | ids[:i+1], thoughts[i]) for each i, one explicit sequence per position."""
    out = []
    for i in range(len(ids) - 1):
        logits = thought_aided_logits(model, ids[: i + 1], thoughts[i]).logits
        out.append(torch.log_softmax(logits, -1)[ids[i + 1]])
    return torch.stack(out)


@torch.no_grad()
def official_style_next_logits(
    model: QuietStarModel,
    ids: list[int],
    num_thought_tokens: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """spec §4.1: thoughts for every position of the whole sequence, keep the last one's mix."""
    x = torch.tensor([ids], device=model.device)
    out = parallel_thought_forward(model, x, num_thought_tokens, n_talk=1, generator=generator)
    return out.mixed_logits[0][0, -1]


@torch.no_grad()
def official_style_generate(
    model: QuietStarModel,
    prompt_ids: list[int],
    max_new_tokens: int,
    num_thought_tokens: int,
    generator: torch.Generator | None = None,
) -> list[int]:
    """Greedy decode with the official cost model: no cache across steps, rethink everything."""
    ids = list(prompt_ids)
    for _ in range(max_new_tokens):
        ids.append(
            int(official_style_next_logits(model, ids, num_thought_tokens, generator).argmax())
        )
    return ids[len(prompt_ids) :]
