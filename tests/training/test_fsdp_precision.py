"""training.fsdp.shard in a one-process gloo group: with bf16 compute the layers run on bf16
gathered weights while the shards the optimizer updates, and their gradients, stay fp32
(spec §3.7); with fp32 compute the sharded step's loss and gradients equal the plain model's."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

import quietstar
from tests.training.train_support import (  # noqa: F401
    make_hf_checkpoint,
    randomize_heads,
    single_thread,
)
from training.config import TrainConfig
from training.fsdp import fsdp_modules, reshard, shard
from training.objective import QuietStarObjective, apply_mode

CFG = TrainConfig(mode="lora", n_ahead=6, n_ahead_talk=2, seq_len=12, data="x", lora_rank=2)


@pytest.fixture
def one_process_group(tmp_path):
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def objective_for(path) -> QuietStarObjective:
    model = quietstar.load(path, dtype=torch.float32)
    randomize_heads(model, seed=2)
    torch.manual_seed(0)  # the LoRA A factors
    return QuietStarObjective(model, CFG, apply_mode(model, CFG))


def run_step(objective: QuietStarObjective):
    ids = torch.randint(0, 250, (2, 12), generator=torch.Generator().manual_seed(1))
    out = objective(ids, torch.ones(2, 12, dtype=torch.bool), seed=5)
    out.losses.total.backward()
    return out.losses.total.detach()


def gradients(objective) -> dict[str, torch.Tensor]:
    grads = {}
    for name, p in objective.named_parameters():
        if p.grad is not None:
            grad = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
            grads[name] = grad
    return grads


def test_bf16_gathers_bf16_weights_and_keeps_fp32_shards(tmp_path, one_process_group):
    objective = objective_for(make_hf_checkpoint(tmp_path / "tiny"))
    shard(objective, torch.bfloat16, torch.device("cpu"))
    assert len(fsdp_modules(objective)) == 1 + len(objective.model.backbone.layers)
    seen = []
    for layer in objective.model.backbone.layers:
        layer.mlp.down_proj.register_forward_hook(
            lambda m, inputs, out: seen.append((m.weight.dtype, inputs[0].dtype))
        )
    loss = run_step(objective)
    reshard(objective)
    assert torch.isfinite(loss)
    assert seen and set(seen) == {(torch.bfloat16, torch.bfloat16)}
    trainable = [(n, p) for n, p in objective.named_parameters() if p.requires_grad]
    assert any(n.startswith("lora.") for n, _ in trainable)
    for name, p in objective.named_parameters():
        assert type(p.data).__name__ == "DTensor" and p.dtype == torch.float32, name
        if p.requires_grad and not name.endswith("lora_a"):  # B = 0 at the start
            assert p.grad is not None and p.grad.dtype == torch.float32, name


def test_fp32_sharded_step_equals_the_plain_step(tmp_path, one_process_group):
    path = make_hf_checkpoint(tmp_path / "tiny")
    plain, sharded = objective_for(path), objective_for(path)
    shard(sharded, torch.float32, torch.device("cpu"))
    loss, loss_s = run_step(plain), run_step(sharded)
    reshard(sharded)  # registers the shards (and their gradients) again, as the trainer does
    assert loss_s == pytest.approx(loss.item(), rel=1e-6)
    want, got = gradients(plain), gradients(sharded)
    assert got.keys() == want.keys()
    for name, grad in want.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-5, atol=1e-8, msg=name)
