"""save -> load is bit-exact and atomic; a plain HF model loads with fresh heads (spec §2.2)."""

from __future__ import annotations

import logging

import pytest
import torch

import quietstar
from quietstar import checkpoint
from quietstar.model import END_THOUGHT, START_THOUGHT
from quietstar.reference import thought_aided_logits
from tests.support import make_hf_checkpoint, randomize_heads

PREFIX, THOUGHT = [5, 17, 200, 33], [40, 41, 42]


def leftovers(parent, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


def state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("family", ["llama", "smollm2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_round_trip_is_bit_exact(tmp_path, family, dtype):
    model = quietstar.load(make_hf_checkpoint(tmp_path / "src", family), dtype=dtype)
    randomize_heads(model, seed=3)
    out = quietstar.save(model, tmp_path / "ckpt")
    again = quietstar.load(out, dtype=dtype)
    before, after = state(model), state(again)
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert after[key].dtype == value.dtype, key
        assert torch.equal(after[key], value), key
    assert again.config == model.config
    assert (again.start_thought_id, again.end_thought_id) == (
        model.start_thought_id,
        model.end_thought_id,
    )
    assert torch.equal(again.masked_token_ids, model.masked_token_ids)
    assert again.tokenizer.get_vocab() == model.tokenizer.get_vocab()
    a, b = (
        thought_aided_logits(model, PREFIX, THOUGHT),
        thought_aided_logits(again, PREFIX, THOUGHT),
    )
    assert float(a.w.abs()) > 0
    assert torch.equal(a.logits, b.logits) and torch.equal(a.w, b.w)


def test_save_is_atomic_and_replaces(tmp_path, tiny_model):
    target = tmp_path / "ckpt"
    quietstar.save(tiny_model, target)
    (target / "stale.txt").write_text("from an earlier save")
    randomize_heads(tiny_model, seed=5)
    quietstar.save(tiny_model, target)
    assert not (target / "stale.txt").exists()
    assert leftovers(tmp_path, "ckpt") == []
    reloaded = quietstar.load(target, dtype=torch.float32)
    assert torch.equal(reloaded.mixing_head.net[4].weight, tiny_model.mixing_head.net[4].weight)


def test_failed_save_keeps_old_checkpoint(tmp_path, tiny_model, monkeypatch):
    target = tmp_path / "ckpt"
    quietstar.save(tiny_model, target)
    files = sorted(p.name for p in target.iterdir())

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "write_files", broken)
    with pytest.raises(OSError, match="disk full"):
        quietstar.save(tiny_model, target)
    assert sorted(p.name for p in target.iterdir()) == files
    assert leftovers(tmp_path, "ckpt") == []


def test_plain_model_gets_fresh_heads(tiny_checkpoint, caplog):
    with caplog.at_level(logging.WARNING, logger="quietstar.checkpoint"):
        model = quietstar.load(tiny_checkpoint, dtype=torch.float32)
    assert model.config.heads_trained is False
    assert any("no Quiet-STaR tensors" in r.getMessage() for r in caplog.records)
    g = torch.Generator().manual_seed(0)
    d = model.backbone.config.hidden_size
    h_base, h_post = torch.randn(4, 7, d, generator=g) * 50, torch.randn(4, 7, d, generator=g)
    w = model.mixing_head(h_base, h_post)
    assert torch.equal(w, torch.zeros_like(w))
    # spec §1.2: both meta vectors start as the '---' embedding (stored / scale).
    dash = model.tokenizer.encode("---", add_special_tokens=False)[0]
    row = model.backbone.embed_tokens.weight[dash]
    assert torch.allclose(model.meta_vector(START_THOUGHT), row)
    assert torch.equal(model.meta_vector(START_THOUGHT), model.meta_vector(END_THOUGHT))
