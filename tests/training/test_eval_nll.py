"""`quietstar eval nll`: the controls behave as constructed on a tiny model, the calibrated base
is fitted where it should be, the standard errors are cluster-robust, and the held-out set is
checked against the heads' training data."""

from __future__ import annotations

import json

import pytest
import torch

import quietstar
from quietstar.llama import DenseCausalAttention
from quietstar.model import END_THOUGHT, START_THOUGHT
from quietstar.thought_content import random_thoughts
from tests.training.train_support import (  # noqa: F401
    gsm_records,
    make_hf_checkpoint,
    randomize_heads,
    single_thread,
    train_args,
    write_jsonl,
)
from training import calibration as cal
from training.controls import score_thoughts, shuffle_thoughts
from training.data import Windows
from training.nll_config import NllEvalConfig
from training.nll_eval import fit_calibration, main
from training.stats import assign_deciles, cluster_se, decile_edges


@pytest.fixture
def model(tmp_path):
    m = quietstar.load(make_hf_checkpoint(tmp_path / "m"), dtype=torch.float32)
    randomize_heads(m, seed=3)
    return m


def window_batch():
    ids = torch.randint(3, 259, (2, 10), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[1, 7:] = False
    return ids, mask


def test_no_content_equals_the_start_end_blend_by_hand(model):
    ids, mask = window_batch()
    got = score_thoughts(model, ids, mask, length=0).nll  # (B, T-1)
    with torch.no_grad():
        for b in range(2):
            for i in range(int(mask[b].sum()) - 1):
                seq = torch.cat((ids[b, : i + 1], torch.tensor([START_THOUGHT, END_THOUGHT])))
                h = model.hidden(seq[None], torch.arange(len(seq))[None], DenseCausalAttention())
                h_base, h_end = h[0, i], h[0, -1]
                w = model.mixing_head(h_base, h_end)
                assert abs(float(w)) > 1e-3  # the heads matter, so the blend is not the base
                blended = ((1 - w) * h_base + w * h_end).to(h_base.dtype)
                logits = model.mask_meta(model.backbone.lm_head(blended).float())
                want = -torch.log_softmax(logits, -1)[ids[b, i + 1]]
                assert got[b, i].item() == pytest.approx(want.item(), abs=1e-4)


def test_random_thoughts_never_contain_meta_tokens(model):
    picks = random_thoughts(model, (64, 48, 16), torch.Generator().manual_seed(0))
    meta = model.masked_token_ids
    assert meta.numel() >= 2 and not torch.isin(picks, meta).any()
    assert picks.min() >= 0 and picks.max() < model.vocab_size
    assert picks.unique().numel() == model.vocab_size - meta.numel()  # uniform: all others drawn


def test_someone_elses_thoughts_permute_thoughts_across_positions():
    B, T, L = 3, 6, 4
    thoughts = torch.arange(B * T * L).view(B, T, L)  # every position's thought is distinct
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[2, 4:] = False
    out = shuffle_thoughts(thoughts, mask, torch.Generator().manual_seed(0))
    real = mask.nonzero().tolist()
    given = sorted(tuple(out[b, t].tolist()) for b, t in real)
    assert given == sorted(tuple(thoughts[b, t].tolist()) for b, t in real)  # same thoughts
    assert all(not torch.equal(out[b, t], thoughts[b, t]) for b, t in real)  # none kept its own
    assert torch.equal(out[~mask], thoughts[~mask])  # padding untouched


def test_calibrated_base_beats_the_raw_base_on_its_fitting_split(model, tmp_path):
    with torch.no_grad():
        model.backbone.lm_head.weight.mul_(4.0)  # an over-confident base: calibration must help
    ids = torch.randint(3, 259, (6, 12), generator=torch.Generator().manual_seed(2))
    windows = Windows(ids, torch.ones_like(ids, dtype=torch.bool))
    cfg = NllEvalConfig(data="unused.jsonl", batch_size=4)
    docs = ["the cat sat on the mat", "12 plus 30 is 42"]
    fitted, edges = fit_calibration(model, windows, docs, cfg)
    assert fitted.temperature > 1.0
    assert fitted.fit_temperature_nll < fitted.fit_base_nll - 0.01
    assert fitted.fit_unigram_nll < fitted.fit_base_nll - 0.01 and 0 < fitted.alpha < 1
    assert edges.shape == (9,) and bool((edges[1:] >= edges[:-1]).all())


def test_golden_section_finds_the_blend_minimum():
    p_base = torch.tensor([0.9, 0.8, 1e-4, 1e-3])
    p_uni = torch.tensor([0.01, 0.01, 0.2, 0.1])
    alpha = cal.fit_alpha(p_base, p_uni)
    grid = torch.linspace(0, 1, 10001)
    best = grid[torch.stack([cal.blend_nll(p_base, p_uni, float(a)).mean() for a in grid]).argmin()]
    assert alpha == pytest.approx(float(best), abs=2e-4)


def test_cluster_robust_se_by_hand():
    values = torch.tensor([1.0, 2.0, 3.0, 4.0])
    # clusters {1,2}, {3,4}: deviations sum to -2 and 2; sqrt(2/1 * 8) / 4 = 1
    assert cluster_se(values, torch.tensor([0, 0, 1, 1])) == pytest.approx(1.0)
    # clusters {1}, {2,3,4}: sums -1.5 and 1.5; sqrt(2 * 4.5) / 4 = 0.75
    assert cluster_se(values, torch.tensor([5, 9, 9, 9])) == pytest.approx(0.75)
    # one token per cluster: the ordinary standard error s / sqrt(N)
    x = torch.randn(50, generator=torch.Generator().manual_seed(0))
    assert cluster_se(x, torch.arange(50)) == pytest.approx(float(x.std() / 50**0.5), rel=1e-6)


def test_deciles_use_the_reference_boundaries():
    edges = decile_edges(torch.arange(100.0))
    assert assign_deciles(torch.tensor([-5.0, 0.0, 9.5, 10.5, 95.0, 500.0]), edges).tolist() == [
        0,
        0,
        0,
        1,
        9,
        9,
    ]


def eval_args(data, out, *extra):
    return [
        "--data",
        str(data),
        "--text-template",
        "{question}\\n{answer}",
        "--eval-fraction",
        "0.25",
        "--seq-len",
        "16",
        "--lengths",
        "0,2",
        "--fit-max-windows",
        "8",
        "--batch-size",
        "4",
        "--out",
        str(out),
        "--dtype",  # the same numbers on every CPU class (auto differs between them)
        "float32",
        *extra,
    ]


def test_cli_reports_every_control_and_refuses_overlap(tmp_path, capsys):
    from training.__main__ import main as train_main

    base = make_hf_checkpoint(tmp_path / "tiny")
    data = write_jsonl(tmp_path / "gsm.jsonl", gsm_records(16))
    run = tmp_path / "run"
    split = ["--eval-fraction", "0.25", "--split-seed", "5"]
    assert train_main(train_args(base, data, run, *split)) == 0
    step = run / "step_000002"

    out = tmp_path / "eval"
    assert main(eval_args(data, out, "--model", str(step), "--split-seed", "5")) == 0
    result = json.loads((out / "nll.json").read_text())
    assert result["overlap"]["overlapping_docs"] == 0
    assert set(result["rows"]) == {
        "base",
        "base_temperature",
        "base_unigram",
        "no_content",
        "thought",
        "random",
        "shuffled",
    }
    assert result["model"]["trained_length"] == 3
    assert set(result["lengths"]) == {"0", "2", "3"}
    assert result["tokens"] == sum(d["tokens"] for d in result["deciles"])
    assert (out / "nll.md").read_text().count("someone else's") >= 2
    assert (out / "nll_vs_length.png").stat().st_size > 1000

    refused = tmp_path / "refused"
    assert main(eval_args(data, refused, "--model", str(step), "--split-seed", "6")) == 2
    assert "in the heads' training data" in capsys.readouterr().err
    forced = ["--model", str(step), "--split-seed", "6", "--allow-overlap", "--lengths", "0"]
    assert main(eval_args(data, refused, *forced)) == 0
    assert json.loads((refused / "nll.json").read_text())["overlap"]["overlapping_docs"] > 0
