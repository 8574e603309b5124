"""Started on every process of a 2-process launch by test_fsdp.py: the `quietstar train` runs
listed in a JSON file, one after another in the same process group (one launch, several runs).

A run listed with `"kill_after_step": N` SIGKILLs every process once step N's checkpoint is
saved, as a crash would: nothing after the save runs, nothing is flushed or cleaned up. With
`"count_collectives": FILE`, rank 0 writes how many all-gathers and reduce-scatters (FSDP2's
`all_gather_single` / `reduce_scatter_single`) each training step issued.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import torch.distributed as dist

import training.trainer
from training.__main__ import main

COUNTED = ("all_gather_single", "reduce_scatter_single")
ORIGINALS = {
    "train_step": training.trainer.train_step,
    "save_checkpoint": training.trainer.save_checkpoint,
    **{name: getattr(dist, name) for name in COUNTED},
}


def restore_originals() -> None:
    """Each run starts unpatched: patches never stack up from one run to the next."""
    training.trainer.train_step = ORIGINALS["train_step"]
    training.trainer.save_checkpoint = ORIGINALS["save_checkpoint"]
    for name in COUNTED:
        setattr(dist, name, ORIGINALS[name])


def kill_after(step: int) -> None:
    save = training.trainer.save_checkpoint

    def save_then_die(run):
        directory = save(run)
        if run.step == step:
            os.kill(os.getpid(), signal.SIGKILL)
        return directory

    training.trainer.save_checkpoint = save_then_die


def count_collectives(path: Path) -> None:
    counts = dict.fromkeys(COUNTED, 0)
    for name in COUNTED:
        collective = getattr(dist, name)

        def counted(*args, _collective=collective, _name=name, **kwargs):
            counts[_name] += 1
            return _collective(*args, **kwargs)

        setattr(dist, name, counted)
    train_step, steps = training.trainer.train_step, []

    def counted_step(run, batch):
        counts.update(dict.fromkeys(COUNTED, 0))
        record = train_step(run, batch)
        steps.append(dict(counts))
        if dist.get_rank() == 0:
            path.write_text(json.dumps(steps))
        return record

    training.trainer.train_step = counted_step


if __name__ == "__main__":
    for run in json.loads(Path(sys.argv[1]).read_text()):
        restore_originals()
        if "kill_after_step" in run:
            kill_after(run["kill_after_step"])
        if "count_collectives" in run:
            count_collectives(Path(run["count_collectives"]))
        if main(run["argv"]) != 0:
            sys.exit(1)
