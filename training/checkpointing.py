"""Step checkpoints: OUT/step_NNNNNN/ = a plain servable Quiet-STaR checkpoint + trainer_state.pt.

The model files are written by the core's `quietstar.checkpoint.write_files` (LoRA merged in
first), and `trainer_state.pt` (optimizer, scheduler, RNG, data position, LoRA factors) goes into
the same temporary directory before the single rename, so a step directory is complete or absent.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import shutil
import tempfile
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file

import quietstar
from quietstar.checkpoint import to_internal, write_files
from quietstar.config import TENSORS_FILE, QuietStarConfig

from .heads import load_initial_model
from .objective import HEAD_PREFIXES

if TYPE_CHECKING:
    from quietstar import QuietStarModel

    from .config import TrainConfig
    from .lora import LoraAdapters

log = logging.getLogger(__name__)

TRAINER_STATE = "trainer_state.pt"
STEP_DIR = re.compile(r"^step_(\d{6,})$")


def step_dir(out: str | os.PathLike, step: int) -> Path:
    return Path(out) / f"step_{step:06d}"


def step_dirs(out: str | os.PathLike) -> list[Path]:
    """Complete step directories under `out`, oldest first."""
    root = Path(out)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if STEP_DIR.match(p.name) and (p / TRAINER_STATE).is_file()]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))


def find_last_step(out: str | os.PathLike) -> Path | None:
    dirs = step_dirs(out)
    return dirs[-1] if dirs else None


def resolve_resume(cfg: TrainConfig) -> Path | None:
    """--resume: '' -> None, 'auto' -> last step dir under --out (None if none), else the path."""
    if not cfg.resume:
        return None
    if cfg.resume == "auto":
        last = find_last_step(cfg.out)
        if last is None:
            log.info("--resume auto: no checkpoint under %s, starting fresh", cfg.out)
        return last
    path = Path(cfg.resume).expanduser()
    if not (path / TRAINER_STATE).is_file():
        raise ValueError(f"{path}: not a training checkpoint (no {TRAINER_STATE})")
    return path


def trained_config(
    model: QuietStarModel,
    cfg: TrainConfig,
    steps: int,
    tokens: int,
    base_provenance: dict[str, Any],
    data: dict[str, Any] | None = None,
) -> QuietStarConfig:
    """The model's QuietStarConfig updated with what this run trained (on top of what the base
    model's heads were trained on, `base_provenance`, if anything). `data` is
    training.heads.data_record: sources by name and content hash, the held-out split."""
    provenance = {
        "base_model": cfg.model if cfg.model == "default" else Path(cfg.model).name,
        "init_heads": cfg.init_heads if cfg.init_heads in ("fresh", "shipped") else "directory",
        **(
            data or {"data": Path(cfg.data).name, "text_field": cfg.text_template or cfg.text_field}
        ),
        "steps": steps,
        "tokens": tokens,
        "mode": cfg.mode,
        "seq_len": cfg.seq_len,
        "batch_size": cfg.batch_size,
        "num_thoughts": cfg.num_thoughts,
        "lr": cfg.lr,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "trainer": "quietstar train",
    }
    if base_provenance:
        provenance["base_provenance"] = base_provenance
    return replace(
        model.config,
        n_ahead=cfg.n_ahead,
        n_ahead_talk=cfg.n_ahead_talk,
        heads_trained=True,
        provenance=provenance,
    )


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])


def save_step(
    model: QuietStarModel,
    lora: LoraAdapters | None,
    qconfig: QuietStarConfig,
    trainer_state: dict[str, Any],
    directory: Path,
) -> Path:
    """Write model files + trainer_state.pt into a temp dir, then rename it into place."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        write_step(model, lora, qconfig, trainer_state, tmp)
        publish(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def write_step(
    model: QuietStarModel,
    lora: LoraAdapters | None,
    qconfig: QuietStarConfig,
    trainer_state: dict[str, Any],
    tmp: Path,
) -> None:
    """The servable files (LoRA merged in) and trainer_state.pt, into the staging dir `tmp`."""
    with lora.merged() if lora is not None else contextlib.nullcontext():
        write_files(model, tmp, qconfig)
    torch.save(trainer_state, tmp / TRAINER_STATE)


def publish(tmp: Path, directory: Path) -> None:
    """Rename the complete staging dir into place (replacing an older copy of the step)."""
    if directory.exists():
        shutil.rmtree(directory)
    os.rename(tmp, directory)


def prune(out: str | os.PathLike, keep_last: int) -> None:
    for old in step_dirs(out)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
        log.info("removed old checkpoint %s", old)


def load_trainer_state(directory: Path) -> dict[str, Any]:
    return torch.load(directory / TRAINER_STATE, map_location="cpu", weights_only=False)


def load_model(cfg: TrainConfig, resume: Path | None) -> QuietStarModel:
    """fp32 master weights (spec §3.7). A new run starts from the heads --init-heads names
    (fresh by default). A LoRA run resumes from the unmerged base backbone plus the step's
    Quiet-STaR tensors; its LoRA factors come from trainer_state.pt."""
    if resume is None:
        return load_initial_model(cfg, torch.float32)
    if cfg.mode != "lora":
        return quietstar.load(resume, dtype=torch.float32)
    model = load_initial_model(replace(cfg, init_heads="fresh"), torch.float32)
    tensors = {to_internal(k): v for k, v in load_file(str(resume / TENSORS_FILE)).items()}
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = [k for k in missing if k.startswith(HEAD_PREFIXES)]
    if missing or unexpected:
        raise ValueError(f"{resume / TENSORS_FILE}: missing {missing}, unexpected {unexpected}")
    model.config = QuietStarConfig.load(resume)
    return model
