"""Sharded step checkpoints for `--fsdp` (torch.distributed.checkpoint).

STEP/sharded/ holds every process's shards of the model and the AdamW states (resume needs no
gathering); rank 0 adds the usual servable files, written from the gathered fp32 parameters, and
trainer_state.pt (scheduler, RNG, data position). Everything is staged in one temporary directory
that is renamed into place at the end, as for unsharded runs (training/checkpointing.py). `--out`
must be one filesystem that every process sees (one machine, or a shared mount across nodes).
`load_unsharded` reads the shards back in a single process without a process group.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from .checkpointing import publish
from .fsdp import full_state_dict

SHARDED = "sharded"


def staging_dir(directory: Path) -> Path:
    """A name every process derives alike (the unsharded path uses a random one)."""
    return directory.parent / f".{directory.name}.tmp-sharded"


def save_sharded(
    objective: nn.Module,
    optimizer: torch.optim.Optimizer,
    directory: Path,
    write_rank0: Callable[[Path, dict[str, torch.Tensor]], None],
) -> Path:
    """Collective. Shards -> tmp/sharded on every process; rank 0 calls write_rank0(tmp, full
    fp32 state dict) for the servable files and trainer state, then renames tmp to `directory`."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    tmp = staging_dir(directory)
    is_main = dist.get_rank() == 0
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a run killed while saving
        tmp.mkdir(parents=True)
    dist.barrier()
    try:
        model_state, optim_state = get_state_dict(objective, optimizer)
        dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=tmp / SHARDED)
        full = full_state_dict(objective)
        if is_main:
            write_rank0(tmp, full)
            publish(tmp, directory)
    except BaseException:
        if is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    dist.barrier()
    return directory


def load_sharded(objective: nn.Module, optimizer: torch.optim.Optimizer, directory: Path) -> None:
    """Collective. Restore the sharded model and AdamW states saved by `save_sharded`."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    path = directory / SHARDED
    if not path.is_dir():
        raise ValueError(f"{directory}: no {SHARDED}/ (not saved by an --fsdp run)")
    model_state, optim_state = get_state_dict(objective, optimizer)
    state = {"model": model_state, "optimizer": optim_state}
    dcp.load(state, checkpoint_id=path)
    set_state_dict(
        objective,
        optimizer,
        model_state_dict=state["model"],
        optim_state_dict=state["optimizer"],
    )


def load_unsharded(directory: Path) -> dict[str, torch.Tensor]:
    """The objective's full parameters from STEP/sharded/, in one process (no process group):
    keys `model.backbone...`, `model.mixing_head...`, `lora...` (LoRA factors unmerged)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    path = directory / SHARDED
    metadata = dcp.FileSystemReader(str(path)).read_metadata()
    prefix = "model."
    model = {
        key[len(prefix) :]: torch.empty(meta.size, dtype=meta.properties.dtype)
        for key, meta in metadata.state_dict_metadata.items()
        if key.startswith(prefix) and isinstance(meta, TensorStorageMetadata)
    }
    state = {"model": model}
    with warnings.catch_warnings():  # "assuming ... a single process": that is the intent
        warnings.filterwarnings("ignore", message=".*single process", category=UserWarning)
        dcp.load(state, checkpoint_id=path, no_dist=True)
    return state["model"]
