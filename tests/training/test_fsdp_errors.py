"""--fsdp refuses what it cannot do with a clear error (exit status 2): one process, and
resuming a checkpoint saved with the other --fsdp setting (its optimizer states live elsewhere)."""

from __future__ import annotations

import torch

from tests.training.train_support import (  # noqa: F401
    gsm_records,
    make_hf_checkpoint,
    single_thread,
    train_args,
    write_jsonl,
)
from training.__main__ import main
from training.checkpointing import TRAINER_STATE


def test_fsdp_needs_several_processes(tmp_path, capsys):
    model = make_hf_checkpoint(tmp_path / "tiny")
    data = write_jsonl(tmp_path / "gsm.jsonl", gsm_records(8))
    assert main(train_args(model, data, tmp_path / "run", "--fsdp")) == 2
    assert "--fsdp shards over several processes" in capsys.readouterr().err


def test_resume_refuses_a_checkpoint_of_the_other_fsdp_setting(tmp_path, capsys):
    model = make_hf_checkpoint(tmp_path / "tiny")
    data = write_jsonl(tmp_path / "gsm.jsonl", gsm_records(8))
    out = tmp_path / "run"
    assert main(train_args(model, data, out, "--mode", "heads", "--max-steps", "1")) == 0
    state_file = out / "step_000001" / TRAINER_STATE
    state = torch.load(state_file, weights_only=False)
    state["optimizer"] = None  # what an --fsdp run writes: its AdamW states are in sharded/
    torch.save(state, state_file)
    assert main(train_args(model, data, out, "--mode", "heads", "--resume", "auto")) == 2
    assert "saved by an --fsdp run" in capsys.readouterr().err
