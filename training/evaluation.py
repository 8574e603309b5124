"""Held-out evaluation: next-token NLL of base vs thought-aided predictions (s = 0).

Reported overall and on the hardest 10 % of tokens by base loss, where the paper says the gain
concentrates (spec §6.3). Thoughts are sampled with a fixed seed, so every evaluation of the same
model on the same windows gives the same numbers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from quietstar.parallel import parallel_thought_forward

from .losses import target_logprobs, target_mask

if TYPE_CHECKING:
    from quietstar import QuietStarModel

    from .config import TrainConfig
    from .data import Windows

HARD_FRACTION = 0.10


@torch.no_grad()
def token_nlls(
    model: QuietStarModel, windows: Windows, cfg: TrainConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """(base NLL, thought-aided NLL) of every real next-token target, each (N,)."""
    generator = torch.Generator(model.device).manual_seed(cfg.seed)
    base, thought = [], []
    for start in range(0, len(windows.ids), cfg.eval_batch_size):
        ids = windows.ids[start : start + cfg.eval_batch_size].to(model.device)
        key_mask = windows.mask[start : start + cfg.eval_batch_size].to(model.device)
        out = parallel_thought_forward(
            model,
            ids,
            num_thought_tokens=cfg.thought_tokens,
            n_talk=1,
            key_mask=key_mask,
            temperature=cfg.thought_temperature,
            generator=generator,
        )
        real = target_mask(key_mask)
        base.append(-target_logprobs(out.base_logits, ids)[real])
        thought.append(-target_logprobs(out.mixed_logits[0], ids)[real])
    return torch.cat(base).cpu(), torch.cat(thought).cpu()


def summarize(base: torch.Tensor, thought: torch.Tensor) -> dict[str, float]:
    """Means overall and over the hardest HARD_FRACTION of tokens by base NLL."""
    k = max(1, round(HARD_FRACTION * base.numel()))
    hard = base.topk(k).indices
    return {
        "eval_base_nll": base.mean().item(),
        "eval_thought_nll": thought.mean().item(),
        "eval_hard_base_nll": base[hard].mean().item(),
        "eval_hard_thought_nll": thought[hard].mean().item(),
        "eval_tokens": base.numel(),
    }


def evaluate(model: QuietStarModel, windows: Windows, cfg: TrainConfig) -> dict[str, float]:
    was_training = model.training
    model.eval()
    try:
        return summarize(*token_nlls(model, windows, cfg))
    finally:
        model.train(was_training)
