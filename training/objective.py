"""What one training forward computes, as an nn.Module so DDP/FSDP can wrap it.

`QuietStarObjective.forward(ids, key_mask, seed)`: repeat every sequence num_thoughts times (copies
adjacent, spec §3.6), run THE parallel thought forward of the core
(`quietstar.parallel.parallel_thought_forward`) with thoughts sampled at every position, and score
it with `training.losses.quietstar_loss`. Also owns which parameters train in each `--mode`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import nn

from quietstar.parallel import ParallelThoughtOutput, parallel_thought_forward

from .lora import LoraAdapters
from .losses import LossTerms, quietstar_loss, target_mask

if TYPE_CHECKING:
    from quietstar import QuietStarModel

    from .config import TrainConfig

HEAD_PREFIXES = ("start_embedding", "end_embedding", "mixing_head.")


class ObjectiveOutput(NamedTuple):
    losses: LossTerms
    reward_mean: torch.Tensor  # scalar over rewarded real positions, detached
    w_mean: torch.Tensor  # scalar over scored talk positions, detached
    w_std: torch.Tensor
    num_tokens: torch.Tensor  # real tokens in this (un-repeated) batch

    def scalars(self) -> dict[str, torch.Tensor]:
        """The per-step metrics, by their metrics.jsonl names."""
        terms = self.losses
        return {
            "loss": terms.total,
            "nll": terms.nll,
            "base_loss": terms.base_nll,
            "talk_loss": terms.talk_nll,
            "policy_loss": terms.policy,
            "reward_mean": self.reward_mean,
            "w_mean": self.w_mean,
            "w_std": self.w_std,
        }


def is_head_parameter(name: str) -> bool:
    return name.startswith(HEAD_PREFIXES)


def thought_forward(
    model: QuietStarModel,
    ids: torch.Tensor,
    key_mask: torch.Tensor,
    cfg: TrainConfig,
    generator: torch.Generator | None,
) -> ParallelThoughtOutput:
    """The trainer's call of the core's parallel forward: ids/key_mask (B, L), B = batch * P."""
    return parallel_thought_forward(
        model,
        ids,
        num_thought_tokens=cfg.thought_tokens,
        n_talk=cfg.n_ahead_talk,
        key_mask=key_mask,
        temperature=cfg.thought_temperature,
        reinforce_temperature=cfg.reinforce_temperature,
        generator=generator,
    )


def thought_seed(seed: int, step: int, rank: int) -> int:
    """Thought sampling is seeded per (seed, step, process): resumes replay the same thoughts."""
    return (seed * 1_000_003 + step) * 1009 + rank


class QuietStarObjective(nn.Module):
    def __init__(self, model: QuietStarModel, cfg: TrainConfig, lora: LoraAdapters | None = None):
        super().__init__()
        if model.quantization is not None:
            raise ValueError(
                f"cannot train a quantised model ({model.quantization}): its backbone weights are "
                "integer buffers without gradients; load it without quantize"
            )
        self.model = model
        self.lora = lora
        self.cfg = cfg

    def forward(self, ids: torch.Tensor, key_mask: torch.Tensor, seed: int) -> ObjectiveOutput:
        cfg = self.cfg
        num_tokens = key_mask.sum()
        ids = ids.repeat_interleave(cfg.num_thoughts, dim=0)  # (B*P, L), copies adjacent
        key_mask = key_mask.repeat_interleave(cfg.num_thoughts, dim=0)
        generator = torch.Generator(ids.device).manual_seed(seed)
        out = thought_forward(self.model, ids, key_mask, cfg, generator)
        losses = quietstar_loss(
            out.base_logits,
            out.mixed_logits,
            out.thought_logprobs,
            ids,
            key_mask,
            num_thoughts=cfg.num_thoughts,
            original_loss_weight=cfg.original_loss_weight,
            policy_loss_beta=cfg.policy_loss_beta,
        )
        return ObjectiveOutput(losses, *_diagnostics(losses, out, key_mask), num_tokens)


def _diagnostics(
    losses: LossTerms, out: ParallelThoughtOutput, key_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean reward over rewarded real positions, mean w, std w over scored positions)."""
    R = losses.reward.shape[1]
    rewarded = target_mask(key_mask)[:, :R]
    reward_mean = losses.reward[rewarded].mean() if rewarded.any() else losses.reward.new_zeros(())
    ws = [
        w[:, : w.shape[1] - 1 - s, 0][target_mask(key_mask, s)]
        for s, w in enumerate(out.mixing_weights)
    ]
    w = torch.cat(ws).detach().float()
    w_std = w.std() if w.numel() > 1 else w.new_zeros(())
    return reward_mean, w.mean(), w_std


def apply_mode(model: QuietStarModel, cfg: TrainConfig) -> LoraAdapters | None:
    """Set requires_grad for --mode; in lora mode attach adapters to the frozen backbone."""
    for name, p in model.named_parameters():
        p.requires_grad_(cfg.mode == "full" or is_head_parameter(name))
    if cfg.mode != "lora":
        return None
    return LoraAdapters(model.backbone, cfg.lora_target_names, cfg.lora_rank, cfg.lora_alpha)
