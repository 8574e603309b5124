"""--activation-checkpointing recomputes every decoder layer call of the unrolled thought step
in backward: the loss and every gradient equal those of the step that keeps its activations,
and far fewer activations are kept for backward."""

from __future__ import annotations

import pytest
import torch

import quietstar
from tests.training.train_support import (  # noqa: F401
    make_hf_checkpoint,
    randomize_heads,
    single_thread,
)
from training.config import TrainConfig
from training.objective import QuietStarObjective, apply_mode
from training.recompute import checkpoint_layers


def step_gradients(path, mode: str, recompute: bool):
    model = quietstar.load(path, dtype=torch.float32)
    randomize_heads(model, seed=3)  # w != 0: the policy term and every head get gradients
    cfg = TrainConfig(mode=mode, n_ahead=6, n_ahead_talk=2, seq_len=12, data="x", lora_rank=2)
    torch.manual_seed(0)  # the LoRA A factors
    lora = apply_mode(model, cfg)
    if recompute:
        checkpoint_layers(model.backbone)
    objective = QuietStarObjective(model, cfg, lora)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 250, (2, 12), generator=g)
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, 9:] = False  # padding in one row
    kept = [0]  # bytes saved for backward outside checkpointed regions (those hold none)

    def pack(t: torch.Tensor) -> torch.Tensor:
        kept[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = objective(ids, mask, seed=7)
    out.losses.total.backward()
    grads = {n: p.grad.clone() for n, p in objective.named_parameters() if p.requires_grad}
    return out.losses.total.detach(), grads, kept[0]


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_recomputed_layers_give_the_same_loss_and_gradients(tmp_path, mode):
    path = make_hf_checkpoint(tmp_path / "tiny")
    loss, grads, kept = step_gradients(path, mode, recompute=False)
    loss_r, grads_r, kept_r = step_gradients(path, mode, recompute=True)
    assert loss_r == loss and loss.item() != 0
    assert grads_r.keys() == grads.keys()
    for name, grad in grads.items():
        if not name.endswith("lora_a"):  # B = 0 at the start: no gradient reaches A yet
            assert grad.abs().sum() > 0, name
        torch.testing.assert_close(grads_r[name], grad, rtol=1e-6, atol=1e-9, msg=name)
    assert kept_r < 0.5 * kept
