"""`load(path, heads=DIR)` takes the Quiet-STaR tensors from another directory (how the default
model picks up the heads shipped with the package)."""

from __future__ import annotations

import shutil

import pytest
import torch

import quietstar
from quietstar.config import CONFIG_FILE, TENSORS_FILE
from tests.support import make_hf_checkpoint, randomize_heads


def test_heads_from_another_directory(tmp_path):
    plain = make_hf_checkpoint(tmp_path / "plain")
    trained = quietstar.load(plain, dtype=torch.float32)
    randomize_heads(trained)
    saved = quietstar.save(trained, tmp_path / "ckpt", trained.config.__class__(heads_trained=True))
    heads = tmp_path / "heads"
    heads.mkdir()
    for name in (CONFIG_FILE, TENSORS_FILE):
        shutil.copy(saved / name, heads / name)

    model = quietstar.load(plain, heads=heads, dtype=torch.float32)
    assert model.config.heads_trained
    for name in ("start_embedding", "end_embedding", "mixing_head.net.4.weight"):
        assert torch.equal(
            dict(model.named_parameters())[name], dict(trained.named_parameters())[name]
        )
    assert not torch.equal(
        model.mixing_head.net[4].weight, torch.zeros_like(model.mixing_head.net[4].weight)
    )


def test_heads_directory_must_hold_a_config(tmp_path):
    plain = make_hf_checkpoint(tmp_path / "plain")
    with pytest.raises(ValueError, match=CONFIG_FILE):
        quietstar.load(plain, heads=tmp_path, dtype=torch.float32)


def test_the_engine_serves_heads_from_another_directory(tmp_path):
    """`quietstar serve --heads DIR` (EngineConfig.heads) reaches the loader."""
    from server.engine import Engine, EngineConfig

    plain = make_hf_checkpoint(tmp_path / "plain")
    trained = quietstar.load(plain, dtype=torch.float32)
    randomize_heads(trained)
    saved = quietstar.save(trained, tmp_path / "ckpt", trained.config.__class__(heads_trained=True))
    config = EngineConfig(model=str(plain), heads=str(saved), dtype="float32", max_num_seqs=1)
    engine = Engine(config)
    assert engine.model.config.heads_trained
    assert torch.equal(engine.model.mixing_head.net[4].weight, trained.mixing_head.net[4].weight)
    assert not Engine(EngineConfig(model=str(plain), dtype="float32")).model.config.heads_trained
