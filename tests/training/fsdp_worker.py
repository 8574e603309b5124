"""Started on every process of a 2-process launch by test_fsdp.py: the `quietstar train` runs
listed in a JSON file, one after another in the same process group (one launch, several runs).

A run listed with `"kill_after_step": N` SIGKILLs every process once step N's checkpoint is
saved, as a crash would: nothing after the save runs, nothing is flushed or cleaned up.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import training.trainer
from training.__main__ import main


def kill_after(step: int) -> None:
    save = training.trainer.save_checkpoint

    def save_then_die(run):
        directory = save(run)
        if run.step == step:
            os.kill(os.getpid(), signal.SIGKILL)
        return directory

    training.trainer.save_checkpoint = save_then_die


if __name__ == "__main__":
    for run in json.loads(Path(sys.argv[1]).read_text()):
        if "kill_after_step" in run:
            kill_after(run["kill_after_step"])
        if main(run["argv"]) != 0:
            sys.exit(1)
