"""Where a run's Quiet-STaR heads start, and what its checkpoints record about the data.

Training starts where the paper starts (spec §1.2, §2.2): the mixing head's last layer is zero
(w ≡ 0) and both meta vectors are the embedding of '---', whatever heads the base model carries,
unless `--init-heads shipped|PATH` asks for trained ones. The provenance names the data and the
held-out split by content hash, seed and fraction (never a machine path), so an evaluation can
tell whether its held-out text overlaps what the heads were trained on (training/overlap.py).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

import quietstar

if TYPE_CHECKING:
    from quietstar import QuietStarModel

    from .config import TrainConfig

log = logging.getLogger(__name__)

FRESH, SHIPPED = "fresh", "shipped"


def load_initial_model(cfg: TrainConfig, dtype: torch.dtype = torch.float32) -> QuietStarModel:
    """The model a new run starts from: cfg.model's backbone with the heads --init-heads names."""
    if cfg.init_heads == SHIPPED:
        if cfg.model != "default":
            raise ValueError("--init-heads shipped needs --model default (heads ship for it only)")
        from quietstar.default_model import bundled_default_heads

        if bundled_default_heads() is None:
            raise ValueError("--init-heads shipped: this package ships no default heads")
        return quietstar.load("default", dtype=dtype)
    if cfg.init_heads != FRESH:
        heads = Path(cfg.init_heads).expanduser()
        return quietstar.load(_backbone_path(cfg.model), dtype=dtype, heads=heads)
    model = quietstar.load(_backbone_path(cfg.model), dtype=dtype)
    if model.config.heads_trained:
        log.info("%s carries trained heads; starting from fresh ones (--init-heads)", cfg.model)
        reset_heads(model)
    return model


def _backbone_path(model: str) -> str | Path:
    """`default` without the shipped heads is the plain converted folder."""
    if model != "default":
        return model
    from quietstar.default_model import default_model_dir

    return default_model_dir()


def reset_heads(model: QuietStarModel) -> None:
    """spec §1.2/§2.2: w ≡ 0 and meta vectors = '---'. What the old heads were trained on is
    dropped, unless the backbone itself was trained too (then it is kept as the base's record)."""
    model.mixing_head.reset_parameters()
    model.init_meta_vectors(model.tokenizer.encode("---", add_special_tokens=False)[0])
    old = model.config.provenance
    kept = old if old.get("mode") in ("full", "lora") else {}
    model.config = replace(model.config, heads_trained=False, provenance=kept)


# ---------------------------------------------------------------- data record


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def docs_sha256(docs: list[str]) -> str:
    """Order-independent hash of a document set (sorted per-document hashes)."""
    hashes = sorted(hashlib.sha256(d.encode()).hexdigest() for d in docs)
    return hashlib.sha256("\n".join(hashes).encode()).hexdigest()


def source_record(source: str, max_docs: int) -> dict[str, Any]:
    """A data source by name (a file's base name, never its path) and content hash."""
    path = Path(source).expanduser()
    if path.is_file():
        return {"name": path.name, "sha256": file_sha256(path), "max_docs": max_docs}
    return {"name": source, "sha256": None, "max_docs": max_docs}  # a hub dataset


def data_record(cfg: TrainConfig, train_docs: list[str], eval_docs: list[str]) -> dict[str, Any]:
    """What a run trains on and holds out, for the checkpoint's provenance."""
    record = {
        "data": source_record(cfg.data, cfg.max_docs),
        "text_field": cfg.text_template or cfg.text_field,
        "train_docs": len(train_docs),
        "train_docs_sha256": docs_sha256(train_docs),
    }
    if cfg.eval_data:
        held = {"kind": "file", "data": source_record(cfg.eval_data, 0)}
    elif eval_docs:
        held = {"kind": "fraction", "seed": cfg.held_out_seed, "fraction": cfg.eval_fraction}
    else:
        held = {"kind": "none"}
    if eval_docs:
        held.update(num_docs=len(eval_docs), docs_sha256=docs_sha256(eval_docs))
    record["held_out"] = held
    return record
