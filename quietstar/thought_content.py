"""What a thought contains: tokens sampled from the model (as trained and served), or, as a
control, tokens drawn uniformly over the vocabulary with the meta tokens excluded.

The random control keeps the thought's length and position (START, L tokens, END, then the
mixing head) and removes its content, so a gain that survives it does not come from what the
model thought. Training's `quietstar eval nll` and the serving engine share these draws.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .model import QuietStarModel

# `thoughts.content` on the API, `ThoughtParams.content` in the engine
THOUGHT_CONTENTS = ("model", "random")


def allowed_thought_ids(model: QuietStarModel) -> torch.Tensor:
    """Every vocabulary id except the masked ones (the meta tokens), (V',) long."""
    allowed = torch.ones(model.vocab_size, dtype=torch.bool, device=model.device)
    allowed[model.masked_token_ids] = False
    return allowed.nonzero().squeeze(-1)


def random_thoughts(
    model: QuietStarModel, shape: tuple[int, ...], generator: torch.Generator
) -> torch.Tensor:
    """ids of `shape` (e.g. (B, T, L)) uniform over the vocabulary, meta tokens excluded."""
    allowed = allowed_thought_ids(model)
    picks = torch.randint(len(allowed), shape, generator=generator, device=model.device)
    return allowed[picks]


def uniform_logits(model: QuietStarModel) -> torch.Tensor:
    """(V,) fp32 logits of the uniform distribution over the allowed ids: 0, or -inf for a
    meta token. Sampling a row with these logits draws a random thought token."""
    logits = torch.zeros(model.vocab_size, dtype=torch.float32, device=model.device)
    return model.mask_meta(logits)
