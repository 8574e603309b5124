"""Each loss term on hand-computed numbers (spec §3.6), padding included."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from training.losses import (
    masked_mean,
    nll_objective,
    policy_loss,
    quietstar_loss,
    target_logprobs,
    thought_advantage,
    thought_reward,
)

# One sequence of L = 4 tokens whose last token is padding; T = 2 talk offsets.
KEY_MASK = torch.tensor([[True, True, True, False]])
BASE_LOGP = torch.tensor([[-1.0, -2.0, -3.0]])  # log p_base(x_{i+1}), i = 0..2
TALK_LOGP = [
    torch.tensor([[-0.5, -1.0, -9.0]]),  # s = 0: log p_mix(x_{i+1})
    torch.tensor([[-2.0, -9.0]]),
]  # s = 1: log p_mix(x_{i+2})


def test_masked_mean_ignores_masked_entries():
    assert masked_mean(torch.tensor([1.0, 2.0, 100.0]), torch.tensor([1, 1, 0])).item() == 1.5
    assert masked_mean(torch.tensor([5.0]), torch.tensor([0])).item() == 0.0


def test_target_logprobs_offsets():
    logits = torch.log(torch.tensor([[[0.1, 0.9], [0.7, 0.3], [0.5, 0.5]]]))  # (1, 3, 2)
    ids = torch.tensor([[0, 1, 0]])
    assert torch.allclose(target_logprobs(logits, ids, 0), torch.log(torch.tensor([[0.9, 0.7]])))
    assert torch.allclose(target_logprobs(logits, ids, 1), torch.log(torch.tensor([[0.1]])))


def test_nll_objective_with_padding():
    nll, base, talk = nll_objective(BASE_LOGP, TALK_LOGP, KEY_MASK, original_loss_weight=0.5)
    assert base.item() == pytest.approx((1 + 2) / 2)  # the padded target x_3 is ignored
    # s=0: (0.5 + 1) / 2 over real targets x_1, x_2; s=1: only x_2 is real -> 2.
    assert talk.item() == pytest.approx((0.75 + 2.0) / 2)
    assert nll.item() == pytest.approx(0.5 * 1.5 + 0.5 * 1.375)


def test_reward_sums_gains_over_offsets_on_rewarded_positions():
    reward = thought_reward(BASE_LOGP, TALK_LOGP, KEY_MASK)
    # Positions i <= L-1-T = 1. i=0: (-0.5+1) + (-2+2) = 0.5.
    # i=1: (-1+2) + [x_3 is padding] 0 = 1.
    assert reward.tolist() == [[0.5, 1.0]]
    assert not reward.requires_grad


def test_reward_is_detached_even_from_differentiable_inputs():
    base = BASE_LOGP.clone().requires_grad_()
    talk = [t.clone().requires_grad_() for t in TALK_LOGP]
    assert not thought_reward(base, talk, KEY_MASK).requires_grad


def test_advantage_mean_over_passes_baseline_and_clamp():
    reward = torch.tensor(
        [
            [1.0, 4.0],
            [3.0, 0.0],  # sequence 0, passes 0 and 1
            [2.0, 2.0],
            [2.0, 5.0],
        ]
    )  # sequence 1
    adv = thought_advantage(reward, num_thoughts=2)
    assert adv.tolist() == [[0.0, 2.0], [1.0, 0.0], [0.0, 0.0], [0.0, 1.5]]
    three = thought_advantage(torch.tensor([[0.0], [3.0], [6.0]]), num_thoughts=3)
    assert three.tolist() == [[0.0], [0.0], [3.0]]


def test_policy_loss_mean_over_rows_positions_and_tokens():
    # B=2 rows, L=3 positions (R=2 rewarded), K=2 thought tokens.
    logp = torch.tensor(
        [
            [[-1.0, -2.0], [-3.0, -4.0], [-50.0, -50.0]],
            [[-0.5, -0.5], [-1.0, -1.0], [-50.0, -50.0]],
        ],
        requires_grad=True,
    )
    adv = torch.tensor([[2.0, 0.0], [0.0, 4.0]])
    loss = policy_loss(logp, adv)
    # sum of A * -logp: 2*(1+2) + 4*(1+1) = 14, over 2*2*2 = 8 entries.
    assert loss.item() == pytest.approx(14 / 8)
    loss.backward()  # log-probs are NOT detached: the gradient is -A / 8 per token
    assert logp.grad[0, 0].tolist() == [-0.25, -0.25]
    assert logp.grad[1, 1].tolist() == [-0.5, -0.5]
    assert logp.grad[:, 2].abs().sum() == 0  # unrewarded tail position
    assert policy_loss(None, adv).item() == 0.0


def test_quietstar_loss_matches_cross_entropy_and_formula():
    g = torch.Generator().manual_seed(0)
    B, L, V, K, T = 4, 6, 7, 3, 2
    ids = torch.randint(0, V, (B, L), generator=g)
    key_mask = torch.ones(B, L, dtype=torch.bool)
    key_mask[2:, 4:] = False
    base_logits = torch.randn(B, L, V, generator=g)
    mixed = [torch.randn(B, L, V, generator=g) for _ in range(T)]
    logp = -torch.rand(B, L, K, generator=g)
    terms = quietstar_loss(
        base_logits,
        mixed,
        logp,
        ids,
        key_mask,
        num_thoughts=2,
        original_loss_weight=0.5,
        policy_loss_beta=10.0,
    )
    labels = ids.masked_fill(~key_mask, -100)
    ce = F.cross_entropy(base_logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1))
    assert terms.base_nll.item() == pytest.approx(ce.item(), rel=1e-6)
    talk = [
        F.cross_entropy(z[:, : L - 1 - s].reshape(-1, V), labels[:, s + 1 :].reshape(-1))
        for s, z in enumerate(mixed)
    ]
    assert terms.talk_nll.item() == pytest.approx(sum(t.item() for t in talk) / T, rel=1e-6)
    assert terms.nll.item() == pytest.approx(
        0.5 * ce.item() + 0.5 * terms.talk_nll.item(), rel=1e-6
    )
    assert terms.reward.shape == (B, L - T) and terms.advantage.min() >= 0
    expected_policy = (-terms.advantage[..., None] * logp[:, : L - T]).mean()
    assert terms.policy.item() == pytest.approx(expected_policy.item(), rel=1e-6)
    assert terms.total.item() == pytest.approx(
        terms.nll.item() + 10.0 * terms.policy.item(), rel=1e-6
    )


def test_base_thought_identical_gives_zero_reward_and_policy():
    """w == 0 (fresh heads): mixed logits at offset s are the base logits at i+s -> r = 0."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 5, (2, 5), generator=g)
    base = torch.randn(2, 5, 5, generator=g)
    mixed = [base, torch.cat((base[:, 1:], torch.zeros_like(base[:, :1])), dim=1)]
    terms = quietstar_loss(
        base, mixed, -torch.rand(2, 5, 2), ids, torch.ones(2, 5, dtype=torch.bool), num_thoughts=2
    )
    assert terms.reward.abs().max().item() == 0.0
    assert terms.policy.item() == 0.0
