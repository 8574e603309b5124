"""Training starts where the paper starts: fresh heads (w ≡ 0, meta vectors = '---') even from a
checkpoint with trained heads, unless --init-heads asks otherwise; the provenance records the
data and held-out split by content hash, seed and fraction, never by a machine path."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import torch

import quietstar
from quietstar.checkpoint import save
from tests.training.train_support import (  # noqa: F401
    gsm_records,
    make_hf_checkpoint,
    randomize_heads,
    single_thread,
    train_args,
    write_jsonl,
)
from training.__main__ import main
from training.metrics import read_metrics


def trained_heads_checkpoint(tmp_path):
    model = quietstar.load(make_hf_checkpoint(tmp_path / "plain"), dtype=torch.float32)
    randomize_heads(model, seed=4)
    config = replace(model.config, heads_trained=True, provenance={"mode": "heads", "x": 1})
    return save(model, tmp_path / "with_heads", config)


def test_default_is_fresh_heads_even_from_trained_ones(tmp_path):
    start = trained_heads_checkpoint(tmp_path)
    data = write_jsonl(tmp_path / "gsm.jsonl", gsm_records(12))
    out = tmp_path / "run"
    split = ["--eval-fraction", "0.25", "--split-seed", "3", "--max-steps", "1"]
    assert main(train_args(start, data, out, *split)) == 0
    first = read_metrics(out)[0]
    assert first["w_mean"] == 0.0 and first["reward_mean"] == 0.0  # spec §2.2: w ≡ 0

    model = quietstar.load(out / "step_000001", dtype=torch.float32)
    assert model.config.trained_thought_tokens == [3]  # n_ahead 6: what /v1/models reports
    assert (
        quietstar.load(
            make_hf_checkpoint(tmp_path / "p2"), dtype=torch.float32
        ).config.trained_thought_tokens
        == []
    )
    dash = model.tokenizer.encode("---", add_special_tokens=False)[0]
    row = model.backbone.embed_tokens.weight[dash] / model.config.embedding_scale
    # one heads-only step at lr 1e-3 moves the meta vectors by at most ~1e-3 per entry
    assert torch.allclose(model.start_embedding[0], row, atol=2e-3)

    text = (out / "step_000001" / "quietstar_config.json").read_text()
    prov = json.loads(text)["provenance"]
    assert prov["init_heads"] == "fresh" and "base_provenance" not in prov
    assert prov["data"] == {
        "name": "gsm.jsonl",
        "sha256": hashlib.sha256(data.read_bytes()).hexdigest(),
        "max_docs": 1000,
    }
    assert prov["held_out"]["kind"] == "fraction"
    assert (prov["held_out"]["seed"], prov["held_out"]["fraction"]) == (3, 0.25)
    assert prov["held_out"]["num_docs"] == 3 and prov["train_docs"] == 9
    assert str(tmp_path) not in text  # no machine path


def test_init_heads_path_starts_from_those_heads(tmp_path):
    start = trained_heads_checkpoint(tmp_path)
    plain = tmp_path / "plain"
    data = write_jsonl(tmp_path / "gsm.jsonl", gsm_records(12))
    out = tmp_path / "run"
    args = train_args(plain, data, out, "--init-heads", str(start), "--max-steps", "1")
    assert main(args) == 0
    assert read_metrics(out)[0]["w_mean"] != 0.0
    prov = json.loads((out / "step_000001" / "quietstar_config.json").read_text())["provenance"]
    assert prov["init_heads"] == "directory"
    assert prov["base_provenance"] == {"mode": "heads", "x": 1}


def test_init_heads_shipped_needs_the_default_model(tmp_path, capsys):
    plain = make_hf_checkpoint(tmp_path / "plain")
    data = write_jsonl(tmp_path / "gsm.jsonl", gsm_records(12))
    assert main(train_args(plain, data, tmp_path / "run", "--init-heads", "shipped")) == 2
    assert "--init-heads shipped needs --model default" in capsys.readouterr().err
