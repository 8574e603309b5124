"""The same command runs data-parallel under `accelerate launch` (2 CPU processes, DDP on gloo).

`--multi_gpu` selects accelerate's torchrun launcher, which spawns the processes; on a machine
without CUDA the trainer asks for MULTI_CPU. (`--cpu --num_processes 2` would start one process:
accelerate's simple launcher only fans out on CPU through mpirun.)
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import quietstar
from tests.training.train_support import (  # noqa: F401
    gsm_records,
    make_hf_checkpoint,
    single_thread,
    train_args,
    write_jsonl,
)
from training.checkpointing import load_trainer_state
from training.metrics import read_metrics

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # two processes, each importing torch and accelerate
def test_two_process_cpu_run_finishes_and_writes_a_servable_checkpoint(tmp_path):
    model = make_hf_checkpoint(tmp_path / "tiny")
    data = write_jsonl(tmp_path / "gsm.jsonl", gsm_records(16))
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        "-m",
        "training",
        *train_args(model, data, out, "--eval-fraction", "0.25"),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"final checkpoint: {out / 'step_000002'}" in proc.stdout  # printed once, by rank 0
    assert proc.stdout.count("final checkpoint") == 1
    records = read_metrics(out)
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2]
    assert [r["step"] for r in records if r["kind"] == "eval"] == [2]
    assert all(r["tokens"] > 0 for r in records if r["kind"] == "train")
    state = load_trainer_state(out / "step_000002")
    assert state["num_processes"] == 2 and state["samples_seen"] == 8
    loaded = quietstar.load(out / "step_000002", dtype=torch.float32)
    assert loaded.config.heads_trained and loaded.config.provenance["steps"] == 2
    assert torch.isfinite(loaded.start_embedding).all()
