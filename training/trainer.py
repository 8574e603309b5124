"""The training loop: `train(cfg)` and `train_step` (thoughts + losses -> backward -> clip ->
update -> metrics), data-parallel through `accelerate` (one process, DDP, or FSDP2), with
held-out evaluation and step checkpoints. Set-up lives in run.py.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from . import checkpointing as ckpt
from . import fsdp
from .config import TrainConfig
from .data import Windows
from .evaluation import evaluate
from .fsdp_checkpoint import save_sharded
from .objective import ObjectiveOutput, thought_seed
from .run import Run, make_accelerator, setup

if TYPE_CHECKING:
    from quietstar import QuietStarModel
    from quietstar.config import QuietStarConfig

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- the step


def train_step(run: Run, batch: dict[str, torch.Tensor]) -> dict[str, float]:
    start = time.perf_counter()
    lr = run.scheduler.get_last_lr()[0]
    seed = thought_seed(run.cfg.seed, run.step, run.accelerator.process_index)
    out = run.objective(batch["ids"], batch["mask"], seed)  # 1) thoughts + losses
    run.accelerator.backward(out.losses.total)  # 2) backward
    if run.cfg.fsdp:
        fsdp.reshard(run.objective)
    grad_norm = _clip(run)  # 3) clip
    run.optimizer.step()  # 4) update
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.step += 1
    return _step_metrics(run, out, grad_norm, lr, time.perf_counter() - start)  # 5) metrics


def _clip(run: Run) -> torch.Tensor:
    params = [p for p in run.objective.parameters() if p.requires_grad]
    max_norm = run.cfg.max_grad_norm or float("inf")
    if run.cfg.fsdp:
        return fsdp.clip_grad_norm_(params, max_norm)
    return run.accelerator.clip_grad_norm_(params, max_norm)


def _step_metrics(run: Run, out: ObjectiveOutput, grad_norm, lr: float, seconds: float) -> dict:
    """Metrics averaged over processes (tokens summed) -> a metrics.jsonl record."""
    scalars = out.scalars()
    stats = torch.stack(list(scalars.values())).detach().float()
    stats = run.accelerator.reduce(stats, reduction="mean")
    tokens = int(run.accelerator.reduce(out.num_tokens.detach(), reduction="sum"))
    run.tokens_seen += tokens
    record = {"kind": "train", "step": run.step, **dict(zip(scalars, stats.tolist(), strict=True))}
    record.update(grad_norm=float(grad_norm), lr=lr, tokens=tokens, tokens_seen=run.tokens_seen)
    record.update(tokens_per_s=tokens / max(seconds, 1e-9), step_s=seconds)
    return record


# ---------------------------------------------------------------- evaluation and checkpoints


def maybe_evaluate(run: Run, windows: Windows | None, final: bool) -> bool:
    """Held-out eval when due (on every process alike); rank 0 computes, logs and records it."""
    cfg = run.cfg
    due = final or (cfg.eval_every > 0 and run.step % cfg.eval_every == 0)
    if windows is None or not due:
        return False
    # FSDP: every process gathers the weights and runs the same layer calls (FSDP's hooks keep
    # per-process bookkeeping that must stay alike); rank 0 records
    with fsdp.gathered(run.objective) if cfg.fsdp else contextlib.nullcontext():
        if run.accelerator.is_main_process or cfg.fsdp:
            result = evaluate(_model(run), windows, cfg)
        if run.accelerator.is_main_process:
            run.metrics.write({"kind": "eval", "step": run.step, **result})
            log.info(
                "eval step %d: NLL base %.4f thought %.4f | hardest 10%%: base %.4f thought %.4f",
                run.step,
                result["eval_base_nll"],
                result["eval_thought_nll"],
                result["eval_hard_base_nll"],
                result["eval_hard_thought_nll"],
            )
        run.accelerator.wait_for_everyone()
    return True


def save_checkpoint(run: Run) -> Path:
    cfg, accelerator = run.cfg, run.accelerator
    directory = ckpt.step_dir(cfg.out, run.step)
    if cfg.fsdp:
        optimizer = run.optimizer.optimizer  # under accelerate's AcceleratedOptimizer
        save_sharded(run.objective, optimizer, directory, partial(_write_gathered, run))
    elif accelerator.is_main_process:
        objective = accelerator.unwrap_model(run.objective)
        state = _trainer_state(run)
        ckpt.save_step(objective.model, objective.lora, _qconfig(run), state, directory)
    if accelerator.is_main_process:
        ckpt.prune(cfg.out, cfg.keep_last)
        log.info("saved %s", directory)
    accelerator.wait_for_everyone()
    return directory


def _write_gathered(run: Run, tmp: Path, full: dict[str, torch.Tensor]) -> None:
    """Rank 0 of an --fsdp save: the servable files from the gathered fp32 parameters."""
    objective = run.objective
    with fsdp.swapped_in(objective, full):
        ckpt.write_step(objective.model, objective.lora, _qconfig(run), _trainer_state(run), tmp)


def _qconfig(run: Run) -> QuietStarConfig:
    """The checkpoint's quietstar_config.json: the model's, updated with what this run trained."""
    model = run.accelerator.unwrap_model(run.objective).model
    return ckpt.trained_config(
        model, run.cfg, run.step, run.tokens_seen, run.base_provenance, run.data_record
    )


def _trainer_state(run: Run) -> dict[str, Any]:
    lora = run.accelerator.unwrap_model(run.objective).lora
    return {
        "step": run.step,
        "samples_seen": run.step * run.cfg.batch_size,
        "tokens_seen": run.tokens_seen,
        "base_provenance": run.base_provenance,
        "optimizer": None if run.cfg.fsdp else run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "rng": ckpt.rng_state(),
        "lora": lora.state_dict() if lora is not None else None,
        "train_config": asdict(run.cfg),
        "num_processes": run.accelerator.num_processes,
    }


def _model(run: Run) -> QuietStarModel:
    return run.accelerator.unwrap_model(run.objective).model


# ---------------------------------------------------------------- the loop


def train(cfg: TrainConfig) -> Path:
    """Run training; returns the final step directory (a servable checkpoint). Resuming a
    finished run trains nothing and evaluates its final checkpoint (e.g. on more windows)."""
    accelerator = make_accelerator(cfg)
    resume = ckpt.resolve_resume(cfg)
    run, loader, eval_windows = setup(cfg, accelerator, resume)
    if accelerator.is_main_process:
        (Path(cfg.out) / "train_config.json").write_text(cfg.to_json())
    with logging_redirect_tqdm():
        saved, evaluated = _loop(run, loader, eval_windows, saved=run.step if resume else None)
        final_dir = ckpt.step_dir(cfg.out, run.step) if saved == run.step else save_checkpoint(run)
        if evaluated != run.step:  # the final model is always evaluated
            maybe_evaluate(run, eval_windows, final=True)
    _finish(run)
    return final_dir


def _loop(
    run: Run, loader: Iterable, eval_windows: Windows | None, saved: int | None
) -> tuple[int | None, int | None]:
    """Step, log, evaluate, checkpoint -> (last saved step, last evaluated step)."""
    evaluated = None
    bar = tqdm(
        total=run.cfg.max_steps,
        initial=run.step,
        desc="train",
        dynamic_ncols=True,
        disable=not run.accelerator.is_main_process,
    )
    for batch in loader:
        record = train_step(run, batch)
        if run.metrics is not None:
            run.metrics.write(record)
        bar.set_postfix(loss=f"{record['loss']:.4g}", reward=f"{record['reward_mean']:.3g}")
        bar.update()
        if maybe_evaluate(run, eval_windows, final=False):
            evaluated = run.step
        if run.step % run.cfg.save_every == 0:
            save_checkpoint(run)
            saved = run.step
    bar.close()
    return saved, evaluated


def _finish(run: Run) -> None:
    if run.metrics is None:
        return
    run.metrics.close()
    if run.cfg.plot:
        from .plot import plot_run

        log.info("metrics plot: %s", plot_run(run.cfg.out))
