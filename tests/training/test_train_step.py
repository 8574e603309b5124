"""One training step moves what the spec says should move, and nothing else (TRL-style).

spec §2.2: with fresh heads the mixing head's last layer is zero, so w == 0, the prediction is
the base model's, every reward is 0 and the policy loss is 0. The first step's gradient then
reaches only that last layer among the Quiet-STaR parameters (plus the backbone in full mode,
through the NLL). With randomized heads every trainable parameter gets a gradient and moves.
"""

from __future__ import annotations

import pytest
import torch

import quietstar
from tests.training.train_support import make_hf_checkpoint, randomize_heads, single_thread  # noqa: F401
from training.config import TrainConfig
from training.objective import QuietStarObjective, apply_mode, is_head_parameter
from training.run import make_optimizer


def build(tmp_path, mode: str, randomize: bool):
    model = quietstar.load(make_hf_checkpoint(tmp_path / "m"), dtype=torch.float32)
    if randomize:
        randomize_heads(model, seed=1)
    cfg = TrainConfig(
        mode=mode,
        n_ahead=6,
        n_ahead_talk=2,
        seq_len=12,
        batch_size=2,
        lr=1e-2,
        warmup_steps=1,
        data="unused",
        lora_rank=2,
    )
    lora = apply_mode(model, cfg)
    objective = QuietStarObjective(model, cfg, lora)
    return objective, make_optimizer(objective, cfg)


def batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 259, (2, 12), generator=g)
    key_mask = torch.ones_like(ids, dtype=torch.bool)
    key_mask[1, 9:] = False
    return ids, key_mask


def step(objective, optimizer, seed: int):
    out = objective(*batch(), seed)
    assert torch.isfinite(out.losses.total)
    out.losses.total.backward()
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in objective.named_parameters()}
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return out, grads


def snapshot(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def nonzero(t) -> bool:
    return t is not None and bool(t.abs().sum() > 0)


@pytest.mark.parametrize("mode", ["full", "heads"])
def test_first_step_with_fresh_heads_reaches_only_the_last_mixing_layer(tmp_path, mode):
    objective, optimizer = build(tmp_path, mode, randomize=False)
    before = snapshot(objective)
    out, grads = step(objective, optimizer, seed=0)
    assert out.losses.policy.item() == 0.0 and out.losses.reward.abs().max().item() == 0.0
    assert out.w_mean.item() == 0.0
    assert nonzero(grads["model.mixing_head.net.4.weight"])
    for name in (
        "mixing_head.net.0.weight",
        "mixing_head.net.0.bias",
        "mixing_head.net.2.weight",
        "mixing_head.net.2.bias",
        "start_embedding",
        "end_embedding",
    ):
        assert not nonzero(grads["model." + name]), name
    assert not torch.equal(
        before["model.mixing_head.net.4.weight"], objective.model.mixing_head.net[4].weight
    )
    backbone = [n for n in grads if n.startswith("model.backbone.")]
    if mode == "full":
        assert all(nonzero(grads[n]) for n in backbone)
    else:
        assert all(grads[n] is None for n in backbone)
        assert all(
            torch.equal(before[n], p) for n, p in objective.named_parameters() if n in backbone
        )


@pytest.mark.parametrize("mode", ["full", "heads", "lora"])
def test_every_trainable_parameter_moves_and_nothing_else(tmp_path, mode):
    objective, optimizer = build(tmp_path, mode, randomize=True)
    before = snapshot(objective)
    out1, _ = step(objective, optimizer, seed=0)
    out2, grads = step(objective, optimizer, seed=1)  # LoRA A needs B != 0 to get a gradient
    assert out2.losses.policy.item() > 0  # thoughts differ in value: REINFORCE is active
    trainable = {n for n, p in objective.named_parameters() if p.requires_grad}
    expected = {
        "full": {n for n in before if n.startswith("model.")},
        "heads": {n for n in before if n.startswith("model.") and is_head_parameter(n[6:])},
        "lora": {n for n in before if n.startswith("lora.") or is_head_parameter(n[6:])},
    }[mode]
    assert trainable == expected
    assert any(n.startswith("model.mixing_head") for n in trainable)
    for name, p in objective.named_parameters():
        if name in trainable:
            assert nonzero(grads[name]), f"{name} got no gradient"
            assert not torch.equal(before[name], p), f"{name} did not move"
        else:
            assert torch.equal(before[name], p), f"{name} moved but is frozen in mode {mode}"
