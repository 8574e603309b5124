"""TrainConfig defaults and CLI, held-out evaluation summary, metrics log, plot, TensorBoard skip."""

from __future__ import annotations

import json
import logging
from dataclasses import fields

import pytest
import torch

from tests.training.train_support import (  # noqa: F401
    gsm_records,
    make_hf_checkpoint,
    single_thread,
    train_args,
    write_jsonl,
)
from training.__main__ import main
from training.config import TrainConfig, build_parser, parse_config
from training.evaluation import summarize
from training.metrics import MetricsLog, read_metrics
from training.plot import main as plot_main
from training.run import lr_factor


def test_defaults_are_the_papers():
    cfg = TrainConfig()
    assert (cfg.n_ahead, cfg.n_ahead_talk, cfg.num_thoughts, cfg.thought_tokens) == (12, 4, 2, 9)
    assert (cfg.lr, cfg.warmup_steps, cfg.weight_decay, cfg.max_grad_norm) == (1e-6, 20, 0.001, 1.0)
    assert (cfg.seq_len, cfg.batch_size, cfg.seed, cfg.max_steps) == (256, 8, 42, 100)
    assert (cfg.reinforce_temperature, cfg.policy_loss_beta, cfg.original_loss_weight) == (
        3.0,
        1e6,
        0.5,
    )
    assert cfg.mode == "full" and cfg.data == "open-web-math/open-web-math" and cfg.max_docs == 1000


def test_every_field_is_a_flag_with_help_and_the_parser_round_trips():
    parser = build_parser()
    actions = {a.dest: a for a in parser._actions}
    for f in fields(TrainConfig):
        assert f.name in actions and actions[f.name].help == f.metadata["help"]
    assert {g.title for g in parser._action_groups} >= {
        "model",
        "quiet-star",
        "optimisation",
        "data",
        "output",
    }
    cfg = parse_config(["--mode", "lora", "--lr", "3e-4", "--no-plot", "--n-ahead", "8"])
    assert (cfg.mode, cfg.lr, cfg.plot, cfg.n_ahead) == ("lora", 3e-4, False, 8)
    assert parse_config([]) == TrainConfig()


@pytest.mark.parametrize(
    "bad",
    [
        ["--n-ahead", "2"],
        ["--mode", "nope"],
        ["--seq-len", "3"],
        ["--original-loss-weight", "2"],
    ],
)
def test_invalid_values_are_usage_errors(bad):
    with pytest.raises(SystemExit) as e:
        parse_config(bad)
    assert e.value.code == 2


def test_validation_raises_value_error():
    with pytest.raises(ValueError, match="n_ahead must be >= 3"):
        TrainConfig(n_ahead=2)


def test_lr_schedule_warmup_then_linear_decay():
    assert [lr_factor(t, 4, 104) for t in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert lr_factor(54, 4, 104) == 0.5 and lr_factor(200, 4, 104) == 0.0


def test_eval_summary_overall_and_hardest_tenth():
    base = torch.arange(1.0, 21.0)  # 20 tokens: the hardest 10 % are the 2 largest (19, 20)
    thought = base - 1.0
    s = summarize(base, thought)
    assert s["eval_base_nll"] == 10.5 and s["eval_thought_nll"] == 9.5
    assert s["eval_hard_base_nll"] == 19.5 and s["eval_hard_thought_nll"] == 18.5
    assert s["eval_tokens"] == 20


def test_tensorboard_missing_is_skipped_with_a_clear_message(tmp_path, caplog, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with caplog.at_level(logging.WARNING):
        log = MetricsLog(tmp_path, tensorboard=True)
    assert log.writer is None and "pip install tensorboard" in caplog.text
    log.write({"kind": "train", "step": 1, "loss": 1.0})
    assert read_metrics(tmp_path) == [{"kind": "train", "step": 1, "loss": 1.0}]


def test_cli_run_with_eval_writes_jsonl_plot_and_a_loadable_checkpoint(tmp_path):
    import quietstar

    model = make_hf_checkpoint(tmp_path / "tiny")
    data = write_jsonl(tmp_path / "gsm.jsonl", gsm_records(20))
    out = tmp_path / "run"
    args = train_args(
        model, data, out, "--mode", "heads", "--eval-fraction", "0.2", "--eval-every", "1", "--plot"
    )
    assert main(args) == 0
    records = read_metrics(out)
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [1, 2]
    for key in (
        "base_loss",
        "talk_loss",
        "policy_loss",
        "reward_mean",
        "w_mean",
        "w_std",
        "tokens_per_s",
        "lr",
    ):
        assert all(key in r for r in train), key
    assert (
        evals[0]["eval_tokens"] > 10 and evals[0]["eval_hard_base_nll"] >= evals[0]["eval_base_nll"]
    )
    assert (out / "metrics.png").stat().st_size > 1000
    assert json.loads((out / "train_config.json").read_text())["mode"] == "heads"
    assert quietstar.load(out / "step_000002", dtype=torch.float32).config.provenance["steps"] == 2
    assert plot_main([str(out), "-o", str(tmp_path / "again.png")]) == 0
    assert (tmp_path / "again.png").is_file()
    # resuming the finished run trains nothing and re-evaluates the final checkpoint
    assert main(args + ["--resume", "auto", "--eval-max-windows", "2", "--no-plot"]) == 0
    again = read_metrics(out)
    assert [r for r in again if r["kind"] == "train"] == train
    assert [r["step"] for r in again if r["kind"] == "eval"] == [1, 2, 2]
    assert again[-1]["eval_tokens"] < evals[-1]["eval_tokens"]


def test_plot_smooths_long_runs_and_accepts_a_metrics_file(tmp_path):
    from training.plot import plot_run

    records = [
        {"kind": "train", "step": s, "base_loss": 3.0 - s / 100, "lr": 1e-4} for s in range(1, 61)
    ]
    records.append({"kind": "eval", "step": 60, "eval_base_nll": 2.9, "eval_thought_nll": 2.8})
    write_jsonl(tmp_path / "metrics.jsonl", records)
    assert plot_run(tmp_path / "metrics.jsonl") == tmp_path / "metrics.png"
    assert (tmp_path / "metrics.png").stat().st_size > 1000


def test_the_old_n_passes_flag_still_works_with_a_warning(caplog):
    with caplog.at_level("WARNING", logger="training.config"):
        assert parse_config(["--n-passes", "3"]).num_thoughts == 3
    assert "--n-passes is deprecated; use --num-thoughts" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="training.config"):
        assert parse_config(["--num-thoughts", "4"]).num_thoughts == 4
    assert "deprecated" not in caplog.text
