"""Run set-up: the Accelerator, data, fp32 model (+ mode/LoRA), optimizer and LR schedule, and
the restored state of a resumed run, gathered into one `Run` that the loop in trainer.py mutates.

Order (spec §3): read and validate the data first (bad data fails before any model is loaded),
then load the model in fp32 (spec §3.7), build windows, and prepare everything with accelerate.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, DistributedType, set_seed
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader

from quietstar.dtypes import CpuCaps, DtypeChoice, resolve_dtype

from . import checkpointing as ckpt
from .config import TrainConfig
from .data import (
    DataError,
    Windows,
    make_dataloader,
    make_extractor,
    make_windows,
    read_documents,
    split_documents,
)
from .fsdp import shard
from .fsdp_checkpoint import load_sharded
from .heads import data_record
from .metrics import MetricsLog
from .objective import QuietStarObjective, apply_mode
from .recompute import checkpoint_layers

log = logging.getLogger(__name__)


@dataclass
class Run:
    """Everything the loop mutates, in one place."""

    cfg: TrainConfig
    accelerator: Accelerator
    objective: torch.nn.Module  # QuietStarObjective, as prepared (DDP/FSDP-wrapped or not)
    optimizer: Any
    scheduler: Any
    step: int
    tokens_seen: int
    base_provenance: dict[str, Any]
    data_record: dict[str, Any]  # training/heads.py: data and held-out split, by content hash
    metrics: MetricsLog | None  # main process only


# ---------------------------------------------------------------- set-up


_SHARDABLE = (DistributedType.MULTI_CPU, DistributedType.MULTI_GPU)


def mixed_precision(cfg: TrainConfig, caps: CpuCaps | None = None) -> tuple[str, DtypeChoice]:
    """accelerate's `mixed_precision` for `--dtype` on this machine, and the choice behind it."""
    compute = resolve_dtype(cfg.dtype, "cuda" if torch.cuda.is_available() else "cpu", caps)
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(compute.dtype, "no"), compute


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    precision, compute = mixed_precision(cfg)
    # cpu=True without CUDA: under a launcher (LOCAL_RANK set) that is MULTI_CPU, DDP on gloo.
    # --fsdp: the launcher's process group only; training/fsdp.py shards and casts (no autocast).
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision="no" if cfg.fsdp else precision,
        dataloader_config=DataLoaderConfiguration(split_batches=True),
    )
    if cfg.batch_size % accelerator.num_processes:
        raise ValueError(
            f"--batch-size {cfg.batch_size} is the global batch; it must be divisible "
            f"by the {accelerator.num_processes} processes"
        )
    if cfg.fsdp and accelerator.distributed_type == DistributedType.FSDP:
        raise ValueError(
            "--fsdp shards with the trainer's own FSDP2: launch with a plain multi-GPU accelerate "
            "config (training/accelerate/fsdp2_8gpu.yaml), not accelerate's FSDP plugin"
        )
    if cfg.fsdp and accelerator.distributed_type not in _SHARDABLE:
        raise ValueError(
            f"--fsdp shards over several processes: start it with `accelerate launch "
            f"--multi_gpu --num_processes N -m training ...` (got {accelerator.distributed_type})"
        )
    log.info(
        "accelerate: %s%s, %d process(es), device %s; compute %s (%s), weights fp32",
        accelerator.distributed_type,
        " + FSDP2 (fully_shard)" if cfg.fsdp else "",
        accelerator.num_processes,
        accelerator.device,
        compute.name,
        compute.reason,
    )
    return accelerator


def load_corpus(cfg: TrainConfig) -> tuple[list[str], list[str]]:
    """(train documents, held-out documents), validated before any model is loaded."""
    extract = make_extractor(cfg.text_field, cfg.text_template)
    docs = read_documents(cfg.data, extract, cfg.max_docs, cfg.data_config, cfg.data_split)
    if cfg.eval_data:
        return docs, read_documents(cfg.eval_data, extract, 0, cfg.data_config, cfg.data_split)
    return split_documents(docs, cfg.eval_fraction, cfg.held_out_seed)


def make_optimizer(objective: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; decay on matrices and the meta vectors, not on biases and norm weights."""
    params = [p for p in objective.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        groups, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps
    )


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warmup ((step+1)/warmup, so step 0 already learns), then linear decay to `total`."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def setup(
    cfg: TrainConfig, accelerator: Accelerator, resume: Path | None
) -> tuple[Run, DataLoader, Windows | None]:
    """-> (Run, train dataloader, eval windows or None)."""
    train_docs, eval_docs = load_corpus(cfg)  # 1) data first: bad data fails before the model
    state = ckpt.load_trainer_state(resume) if resume else None
    if state is not None and cfg.fsdp != (state["optimizer"] is None):
        saved_by = "a run without --fsdp" if cfg.fsdp else "an --fsdp run"
        raise ValueError(f"{resume}: saved by {saved_by}; resume it with the same --fsdp setting")
    objective = build_objective(cfg, resume, state)  # 2) fp32 model, --mode, LoRA
    tokenizer = objective.model.tokenizer
    config = objective.model.config
    fresh_provenance = config.provenance  # {} for fresh heads on an untrained backbone
    train_windows = make_windows(train_docs, tokenizer, cfg.seq_len, cfg.seed)  # 3) windows
    eval_windows = _eval_windows(eval_docs, tokenizer, cfg)
    if cfg.fsdp:  # shard first: the optimizer is built over the shards
        shard(objective, mixed_precision(cfg)[1].dtype, accelerator.device)
    optimizer = make_optimizer(objective, cfg)  # 4) optimizer + schedule, restored on resume
    scheduler = make_scheduler(optimizer, cfg)
    step, tokens, base_provenance = restore(optimizer, scheduler, state, fresh_provenance)
    if cfg.fsdp and resume:
        load_sharded(objective, optimizer, resume)
    loader = make_dataloader(  # 5) the data position: samples consumed so far
        train_windows, cfg.batch_size, cfg.seed, step * cfg.batch_size, cfg.max_steps - step
    )
    if cfg.fsdp:
        optimizer, loader, scheduler = accelerator.prepare(optimizer, loader, scheduler)
    else:
        prepared = accelerator.prepare(objective, optimizer, loader, scheduler)
        objective, optimizer, loader, scheduler = prepared
    metrics = None
    if accelerator.is_main_process:
        metrics = MetricsLog(Path(cfg.out), cfg.tensorboard, step if resume else None)
    record = data_record(cfg, train_docs, eval_docs)
    run = Run(
        cfg,
        accelerator,
        objective,
        optimizer,
        scheduler,
        step,
        tokens,
        base_provenance,
        record,
        metrics,
    )
    return run, loader, eval_windows


def build_objective(
    cfg: TrainConfig, resume: Path | None, state: dict | None
) -> QuietStarObjective:
    set_seed(cfg.seed)  # fresh heads and LoRA factors are initialised from the seed
    model = ckpt.load_model(cfg, resume)  # fp32 master weights (spec §3.7)
    lora = apply_mode(model, cfg)
    if cfg.activation_checkpointing:
        checkpoint_layers(model.backbone)
    if lora is not None and state is not None:
        lora.load_state_dict(state["lora"])
    return QuietStarObjective(model, cfg, lora)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> LambdaLR:
    return LambdaLR(optimizer, lambda t: lr_factor(t, cfg.warmup_steps, cfg.schedule_steps))


def restore(
    optimizer, scheduler, state: dict | None, fresh_provenance: dict
) -> tuple[int, int, dict]:
    """Load a resumed run's optimizer/scheduler/RNG -> (step, tokens seen, base provenance)."""
    if state is None:
        return 0, 0, fresh_provenance
    if state["optimizer"] is not None:  # None: an --fsdp checkpoint, whose states are sharded
        optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    ckpt.set_rng_state(state["rng"])
    log.info("resumed at step %d", state["step"])
    return state["step"], state["tokens_seen"], state["base_provenance"]


def _eval_windows(docs: list[str], tokenizer, cfg: TrainConfig) -> Windows | None:
    if not docs:
        return None
    try:
        windows = make_windows(docs, tokenizer, cfg.seq_len, cfg.seed)
    except DataError as e:
        raise DataError(f"held-out data: {e}") from e
    return Windows(windows.ids[: cfg.eval_max_windows], windows.mask[: cfg.eval_max_windows])
