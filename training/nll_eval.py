"""`quietstar eval nll`: held-out next-token NLL of a checkpoint, base vs thought-aided, with the
controls of training/controls.py on the same tokens in one process, a base calibrated on the
training split (training/calibration.py), difficulty deciles chosen on that split and
cluster-robust errors (training/stats.py). Writes OUT/nll.json, OUT/nll.md, OUT/nll_vs_length.png.

Difficulty is the base model's predictive entropy at the position (it never looks at the target),
with decile boundaries from the training split, so no decile is selected by the evaluated NLL.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch

import quietstar
from quietstar.thought_content import random_thoughts

from . import calibration as cal
from .controls import base_logits, score_thoughts, shuffle_thoughts
from .data import DataError, Windows, make_extractor, make_windows, read_documents, split_documents
from .losses import target_mask
from .nll_config import NllEvalConfig, parse_config
from .nll_report import write_outputs
from .overlap import OverlapError, check_overlap
from .stats import decile_edges

log = logging.getLogger(__name__)


def load_texts(cfg: NllEvalConfig) -> tuple[list[str], list[str]]:
    """(training-split documents, held-out documents), read before any model is loaded."""
    extract = make_extractor(cfg.text_field, cfg.text_template)
    docs = read_documents(cfg.data, extract, cfg.max_docs)
    fit_docs, held = split_documents(docs, cfg.eval_fraction, cfg.split_seed)
    if cfg.eval_data:
        held = read_documents(cfg.eval_data, extract)
        if set(held) & set(fit_docs):
            raise OverlapError("--eval-data shares documents with the training part of --data")
    return fit_docs, held


def check_heads_overlap(model, cfg: NllEvalConfig, held: list[str]) -> dict:
    """Refuse (or, with --allow-overlap, warn loudly) if the heads trained on held-out text."""
    files = [f for f in (cfg.data, cfg.eval_data) if f]
    count, warnings = check_overlap(model.config.provenance, files, held)
    for warning in warnings:
        log.warning("overlap check: %s", warning)
    if count:
        message = f"{count} of {len(held)} evaluated documents were in the heads' training data"
        if not cfg.allow_overlap:
            raise OverlapError(message + " (pass --allow-overlap to evaluate anyway)")
        log.warning("!!! %s: these numbers are partly IN-SAMPLE !!!", message)
    return {"overlapping_docs": count, "warnings": warnings}


def batches(windows: Windows, size: int):
    for start in range(0, len(windows.ids), size):
        yield start, windows.ids[start : start + size], windows.mask[start : start + size]


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Predictive entropy of softmax(logits) over the last axis (meta ids at -inf count 0)."""
    return torch.special.entr(torch.softmax(logits, dim=-1)).sum(-1)


@torch.no_grad()
def fit_calibration(model, windows: Windows, fit_docs: list[str], cfg: NllEvalConfig):
    """-> (Calibration, entropy decile edges), both from the training split only."""
    sums = torch.zeros(len(cal.TEMPERATURES), dtype=torch.float64)
    p_base, targets, entropies = [], [], []
    for _, ids, mask in batches(windows, cfg.batch_size):
        real = target_mask(mask)  # (B, T-1)
        z = base_logits(model, ids, mask)[:, :-1][real]  # (n, V)
        t = ids[:, 1:][real]  # (n,)
        sums += cal.temperature_grid_sums(z, t).double()
        p_base.append(torch.softmax(z, dim=-1).gather(-1, t[:, None]).squeeze(-1))
        targets.append(t)
        entropies.append(entropy(z))
        log.info("calibration: %d fit tokens scored", sum(len(x) for x in targets))
    u = cal.unigram(unigram_counts(model, fit_docs), model.masked_token_ids)
    fitted = cal.fit(sums, torch.cat(p_base), torch.cat(targets), u)
    return fitted, decile_edges(torch.cat(entropies))


def unigram_counts(model, docs: list[str]) -> torch.Tensor:
    """Token counts over the whole training split, (V,)."""
    counts = torch.zeros(model.vocab_size, dtype=torch.long)
    for start in range(0, len(docs), 512):
        encoded = model.tokenizer(docs[start : start + 512], add_special_tokens=True)["input_ids"]
        flat = torch.tensor([t for ids in encoded for t in ids], dtype=torch.long)
        counts += torch.bincount(flat, minlength=model.vocab_size)
    return counts


@torch.no_grad()
def score_windows(model, windows: Windows, fitted, cfg: NllEvalConfig, trained: int):
    """Per-token arrays (N,) of every row: base, calibrated bases, thought/controls per length."""
    thought_gen = torch.Generator().manual_seed(cfg.seed)
    control_gen = torch.Generator().manual_seed(cfg.seed + 1)
    lengths = sorted(set(cfg.length_list) | {trained})
    sweep = cfg.sweep_max_windows or len(windows.ids)
    rows: dict[str, list[torch.Tensor]] = {}

    def add(name: str, values: torch.Tensor) -> None:
        rows.setdefault(name, []).append(values.float())

    for start, ids, mask in batches(windows, cfg.batch_size):
        real = target_mask(mask)
        z = base_logits(model, ids, mask)[:, :-1]  # (B, T-1, V)
        targets = ids[:, 1:]
        add("doc", (torch.arange(len(ids)) + start)[:, None].expand_as(real)[real])
        add("entropy", entropy(z)[real])
        add("base", cal.temperature_nll(z[real], targets[real], 1.0))
        add("base_temperature", cal.temperature_nll(z[real], targets[real], fitted.temperature))
        p = torch.softmax(z[real], dim=-1).gather(-1, targets[real][:, None]).squeeze(-1)
        add("base_unigram", cal.blend_nll(p, fitted.unigram[targets[real]], fitted.alpha))
        for length in lengths:
            if length != trained and start >= sweep:
                continue
            for name, scored in _controls(model, ids, mask, length, thought_gen, control_gen):
                add(f"{name}@{length}", scored.nll[real])
                add(f"w:{name}@{length}", scored.w[real])
        log.info("scored windows %d-%d of %d", start, start + len(ids), len(windows.ids))
    return {name: torch.cat(parts) for name, parts in rows.items()}


def _controls(model, ids, mask, length, thought_gen, control_gen):
    """(name, Scored) for the real thoughts and, when length > 0, the content controls."""
    real = score_thoughts(model, ids, mask, length, generator=thought_gen)
    yield "thought", real
    if length == 0:
        return
    shape = tuple(real.thought_ids.shape)
    yield (
        "random",
        score_thoughts(model, ids, mask, length, random_thoughts(model, shape, control_gen)),
    )
    shuffled = shuffle_thoughts(real.thought_ids, mask, control_gen)
    yield "shuffled", score_thoughts(model, ids, mask, length, shuffled)


def run(cfg: NllEvalConfig) -> dict:
    fit_docs, held = load_texts(cfg)  # 1) data first: bad data fails before the model
    model = quietstar.load(cfg.model, dtype=cfg.dtype, heads=cfg.heads or None)  # 2) model
    overlap = check_heads_overlap(model, cfg, held)  # 3) refuse in-sample evaluation
    tokenizer = model.tokenizer
    fit_windows = make_windows(fit_docs, tokenizer, cfg.seq_len, cfg.window_seed)
    order = torch.randperm(len(fit_windows.ids), generator=torch.Generator().manual_seed(0))
    pick = order[: cfg.fit_max_windows]
    fit_windows = Windows(fit_windows.ids[pick], fit_windows.mask[pick])
    windows = make_windows(held, tokenizer, cfg.seq_len, cfg.window_seed)
    if cfg.max_windows:
        windows = Windows(windows.ids[: cfg.max_windows], windows.mask[: cfg.max_windows])
    fitted, edges = fit_calibration(model, fit_windows, fit_docs, cfg)  # 4) calibrated base
    log.info("calibration: %s", fitted.summary())
    trained = model.config.thought_tokens
    arrays = score_windows(model, windows, fitted, cfg, trained)  # 5) every row, same tokens
    return write_outputs(cfg, model, arrays, fitted, edges, overlap, trained)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        result = run(cfg)
    except (DataError, OverlapError, ValueError) as e:
        print(f"quietstar eval nll: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {Path(cfg.out) / 'nll.json'}  (thought {result['headline']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
