"""A checkpoint written by training loads with quietstar.load and gives the in-memory logits;
LoRA is merged into it (a plain servable checkpoint) without disturbing the training model."""

from __future__ import annotations

import pytest
import torch

import quietstar
from quietstar.parallel import parallel_thought_forward
from tests.training.train_support import make_hf_checkpoint, randomize_heads, single_thread  # noqa: F401
from training import checkpointing as ckpt
from training.config import TrainConfig
from training.objective import QuietStarObjective, apply_mode
from training.run import make_optimizer


def trained_objective(tmp_path, mode: str):
    model = quietstar.load(make_hf_checkpoint(tmp_path / "base"), dtype=torch.float32)
    randomize_heads(model, seed=2)
    cfg = TrainConfig(
        mode=mode,
        n_ahead=6,
        n_ahead_talk=2,
        seq_len=12,
        batch_size=2,
        lr=1e-2,
        warmup_steps=1,
        data="train.jsonl",
        lora_rank=2,
        model=str(tmp_path / "base"),
    )
    objective = QuietStarObjective(model, cfg, apply_mode(model, cfg))
    optimizer = make_optimizer(objective, cfg)
    ids = torch.randint(3, 259, (2, 12), generator=torch.Generator().manual_seed(0))
    for seed in range(2):
        objective(ids, torch.ones_like(ids, dtype=torch.bool), seed).losses.total.backward()
        optimizer.step()
        optimizer.zero_grad()
    return objective, cfg


def logits(model, ids, thoughts):
    with torch.no_grad():
        out = parallel_thought_forward(
            model, ids, thoughts.shape[-1], n_talk=2, thought_ids=thoughts
        )
    return out.base_logits, out.mixed_logits[0], out.mixed_logits[1]


@pytest.mark.parametrize("mode", ["full", "heads", "lora"])
def test_saved_checkpoint_loads_with_identical_logits(tmp_path, mode):
    objective, cfg = trained_objective(tmp_path, mode)
    model = objective.model
    backbone_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    qconfig = ckpt.trained_config(model, cfg, steps=2, tokens=48, base_provenance={})
    state = {"step": 2, "lora": None}
    directory = ckpt.save_step(
        model, objective.lora, qconfig, state, tmp_path / "run" / "step_000002"
    )
    assert (directory / ckpt.TRAINER_STATE).is_file() and not list(
        (tmp_path / "run").glob(".*tmp*")
    )
    # saving (and merging LoRA for it) leaves the training model exactly as it was
    assert all(torch.equal(v, model.backbone.state_dict()[k]) for k, v in backbone_before.items())

    loaded = quietstar.load(directory, dtype=torch.float32)
    assert loaded.config.heads_trained and loaded.config.n_ahead == 6
    assert loaded.config.n_ahead_talk == 2
    assert {"base_model", "data", "steps", "tokens", "date", "mode"} <= set(
        loaded.config.provenance
    )
    assert loaded.config.provenance["mode"] == mode
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(3, 259, (2, 10), generator=g)
    thoughts = torch.randint(3, 259, (2, 10, 3), generator=g)
    for mine, theirs in zip(
        logits(model, ids, thoughts), logits(loaded, ids, thoughts), strict=True
    ):
        if mode == "lora":  # W x + B A x versus (W + B A) x: equal up to rounding
            torch.testing.assert_close(theirs, mine, atol=1e-5, rtol=1e-5)
        else:
            assert torch.equal(theirs, mine)


def test_lora_changes_the_merged_weights(tmp_path):
    objective, _ = trained_objective(tmp_path, "lora")
    base = quietstar.load(tmp_path / "base", dtype=torch.float32)
    q_proj = "layers.0.self_attn.q_proj.weight"
    with objective.lora.merged():
        merged = objective.model.backbone.state_dict()[q_proj].clone()
    assert torch.equal(
        objective.model.backbone.state_dict()[q_proj], base.backbone.state_dict()[q_proj]
    )
    assert not torch.equal(merged, base.backbone.state_dict()[q_proj])


def test_keep_last_and_find_last_step(tmp_path):
    for step in (1, 2, 3):
        d = ckpt.step_dir(tmp_path, step)
        d.mkdir()
        (d / ckpt.TRAINER_STATE).write_bytes(b"x")
    (tmp_path / "step_000009").mkdir()  # incomplete (no trainer state): ignored
    assert ckpt.find_last_step(tmp_path).name == "step_000003"
    ckpt.prune(tmp_path, keep_last=2)
    assert [p.name for p in ckpt.step_dirs(tmp_path)] == ["step_000002", "step_000003"]
