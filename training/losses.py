"""Quiet-STaR loss terms as pure functions of logits, targets and masks (spec §3.6).

Shapes: B rows (the batch with each sequence repeated num_thoughts times, copies adjacent), L tokens,
V vocabulary, K sampled thought tokens, T = n_ahead_talk. `mixed_logits[s][:, i]` predicts
x_{i+s+1}; a target counts only where the key mask marks it as a real token (padding ignored).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class LossTerms(NamedTuple):
    total: torch.Tensor  # scalar: nll + beta * policy
    nll: torch.Tensor  # scalar: original_loss_weight * base + (1 - it) * talk
    base_nll: torch.Tensor  # scalar, mean over real targets
    talk_nll: torch.Tensor  # scalar, mean over offsets s of the per-offset means
    policy: torch.Tensor  # scalar, before beta
    reward: torch.Tensor  # (B, L - T) detached, per position and pass
    advantage: torch.Tensor  # (B, L - T) detached


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """spec's mean⁺: the mean over the entries that count (0 if none do)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)


def target_logprobs(logits: torch.Tensor, ids: torch.Tensor, s: int = 0) -> torch.Tensor:
    """log p(x_{i+s+1}) under logits[:, i] for i < L-1-s: (B, L, V), (B, L) -> (B, L-1-s)."""
    L = ids.shape[1]
    logp = F.log_softmax(logits[:, : L - 1 - s].float(), dim=-1)
    return logp.gather(-1, ids[:, s + 1 :, None]).squeeze(-1)


def target_mask(key_mask: torch.Tensor, s: int = 0) -> torch.Tensor:
    """Which of the (B, L-1-s) targets x_{i+s+1} are real tokens."""
    return key_mask[:, s + 1 :]


def nll_objective(
    base_logp: torch.Tensor,
    talk_logp: list[torch.Tensor],
    key_mask: torch.Tensor,
    original_loss_weight: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """spec §3.6.1-3: (w0 * mean⁺(base NLL) + (1-w0) * mean_s mean⁺(talk NLL_s), base, talk)."""
    base = masked_mean(-base_logp, target_mask(key_mask))
    talk = torch.stack(
        [masked_mean(-lp, target_mask(key_mask, s)) for s, lp in enumerate(talk_logp)]
    )
    talk = talk.mean()
    return original_loss_weight * base + (1 - original_loss_weight) * talk, base, talk


def thought_reward(
    base_logp: torch.Tensor, talk_logp: list[torch.Tensor], key_mask: torch.Tensor
) -> torch.Tensor:
    """spec §3.6.4: r(i) = sum_s [log p_mix,s(x_{i+s+1}) - log p_base(x_{i+s+1} | x<=i+s)].

    Only positions i <= L-1-T get a reward (all T targets inside the window); padded targets add
    nothing. Detached: the reward trains no parameter. -> (B, L-T).
    """
    T = len(talk_logp)
    R = base_logp.shape[1] + 1 - T  # positions 0 .. L-1-T
    reward = torch.zeros_like(base_logp[:, :R])
    for s, lp in enumerate(talk_logp):
        gain = lp[:, :R] - base_logp[:, s : s + R]
        reward = reward + gain * target_mask(key_mask, s)[:, :R]
    return reward.detach()


def thought_advantage(reward: torch.Tensor, num_thoughts: int) -> torch.Tensor:
    """spec §3.6.5: A = max(0, r - mean over the num_thoughts copies of the row), detached."""
    B, R = reward.shape
    grouped = reward.view(B // num_thoughts, num_thoughts, R)
    advantage = (grouped - grouped.mean(dim=1, keepdim=True)).clamp(min=0)
    return advantage.view(B, R).detach()


def policy_loss(thought_logprobs: torch.Tensor | None, advantage: torch.Tensor) -> torch.Tensor:
    """spec §3.6.6: mean over rows, rewarded positions and thought tokens of -A * log p(c_k).

    thought_logprobs (B, L, K) at the reinforce temperature, NOT detached; advantage (B, R).
    """
    if thought_logprobs is None or thought_logprobs.shape[-1] == 0:
        return advantage.new_zeros(())
    R = advantage.shape[1]
    return (-advantage[..., None] * thought_logprobs[:, :R]).mean()


def quietstar_loss(
    base_logits: torch.Tensor,
    mixed_logits: list[torch.Tensor],
    thought_logprobs: torch.Tensor | None,
    ids: torch.Tensor,
    key_mask: torch.Tensor,
    num_thoughts: int,
    original_loss_weight: float = 0.5,
    policy_loss_beta: float = 1e6,
) -> LossTerms:
    """spec §3.6.7: total = NLL objective + beta * policy loss."""
    base_logp = target_logprobs(base_logits, ids)
    talk_logp = [target_logprobs(z, ids, s) for s, z in enumerate(mixed_logits)]
    nll, base, talk = nll_objective(base_logp, talk_logp, key_mask, original_loss_weight)
    reward = thought_reward(base_logp, talk_logp, key_mask)
    advantage = thought_advantage(reward, num_thoughts)
    policy = policy_loss(thought_logprobs, advantage)
    return LossTerms(nll + policy_loss_beta * policy, nll, base, talk, policy, reward, advantage)
