"""A run stopped after 2 steps and resumed logs the same losses as a straight 4-step run, and the
final checkpoints are identical (model, optimizer, scheduler, RNG and data position restored)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tests.training.train_support import (  # noqa: F401
    gsm_records,
    make_hf_checkpoint,
    single_thread,
    train_args,
    write_jsonl,
)
from training.__main__ import main
from training.checkpointing import find_last_step, load_trainer_state
from training.metrics import read_metrics

COMPARED = (
    "loss",
    "base_loss",
    "talk_loss",
    "policy_loss",
    "reward_mean",
    "w_mean",
    "lr",
    "grad_norm",
    "tokens_seen",
)


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_resume_logs_identical_losses(tmp_path, mode):
    model = make_hf_checkpoint(tmp_path / "tiny")
    data = write_jsonl(tmp_path / "gsm.jsonl", gsm_records(12))
    common = ["--mode", mode, "--save-every", "2", "--keep-last", "5", "--lora-rank", "2"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(train_args(model, data, straight, *common, "--max-steps", "4")) == 0
    assert main(train_args(model, data, resumed, *common, "--max-steps", "2")) == 0
    assert find_last_step(resumed).name == "step_000002"
    assert (
        main(train_args(model, data, resumed, *common, "--max-steps", "4", "--resume", "auto")) == 0
    )

    a, b = read_metrics(straight), read_metrics(resumed)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3, 4]
    for ra, rb in zip(a, b, strict=True):
        for key in COMPARED:
            assert rb[key] == pytest.approx(ra[key], rel=1e-6, abs=1e-9), (ra["step"], key)
    assert a[-1]["policy_loss"] > 0  # the comparison covers REINFORCE, not just the NLL

    last_a, last_b = straight / "step_000004", resumed / "step_000004"
    for name in ("model.safetensors", "quietstar.safetensors"):
        ta, tb = load_file(last_a / name), load_file(last_b / name)
        assert all(torch.allclose(ta[k], tb[k], atol=1e-6) for k in ta)
    sa, sb = load_trainer_state(last_a), load_trainer_state(last_b)
    assert sa["samples_seen"] == sb["samples_seen"] == 16
    assert sa["scheduler"]["last_epoch"] == sb["scheduler"]["last_epoch"] == 4


def test_resume_explicit_path_and_bad_path(tmp_path, capsys):
    model = make_hf_checkpoint(tmp_path / "tiny")
    data = write_jsonl(tmp_path / "gsm.jsonl", gsm_records(8))
    out = tmp_path / "run"
    assert main(train_args(model, data, out, "--mode", "heads", "--max-steps", "1")) == 0
    step1 = out / "step_000001"
    assert main(train_args(model, data, out, "--mode", "heads", "--resume", str(step1))) == 0
    assert [r["step"] for r in read_metrics(out)] == [1, 2]
    assert main(train_args(model, data, out, "--resume", str(tmp_path / "nope"))) == 2
    assert "not a training checkpoint" in capsys.readouterr().err
