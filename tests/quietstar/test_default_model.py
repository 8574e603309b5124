"""The embedded default model: converted once (bf16 HF folder), cached, safe under concurrency.

Run with `-s` to see the measured times (first conversion, cached lookup, loads).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import quietstar
from quietstar import default_model
from tests.quietstar.tiny_gguf import write_tiny_gguf
from tests.support import make_hf_checkpoint

ROOT = Path(__file__).resolve().parents[2]

# Each child waits for the go file, so both look for the converted folder before either has
# written it: both convert and race on the final rename. An optional second argument swaps the
# embedded GGUF for a tiny one (same code path, a second instead of ~15 s of dequantizing).
CHILD = """
import logging, sys, time
from pathlib import Path
logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
from quietstar import default_model
if len(sys.argv) > 2:
    default_model.find_gguf = lambda: Path(sys.argv[2])
go = Path(sys.argv[1])
while not go.exists():
    time.sleep(0.05)
print(default_model.default_model_dir())
"""


def test_conversion_is_a_plain_bf16_hf_folder(default_model_dir):
    names = {p.name for p in default_model_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert "quietstar_config.json" not in names and "quietstar.safetensors" not in names
    config = json.loads((default_model_dir / "config.json").read_text())
    assert config["model_type"] == "llama" and config["dtype"] == "bfloat16"
    assert "quantization_config" not in config
    with safe_open(str(default_model_dir / "model.safetensors"), "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert dtypes == {"BF16"}


def test_second_call_does_not_convert(default_model_dir, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(default_model, "convert_gguf", fail)
    assert default_model.default_model_dir() == default_model_dir  # `fail` proves no conversion


def test_load_default_fp32_and_bf16(default_model_dir):
    for dtype in (torch.float32, torch.bfloat16):
        start = time.perf_counter()
        model = quietstar.load("default", dtype=dtype)
        print(
            f"\n[default model] quietstar.load('default', {dtype}): {time.perf_counter() - start:.2f} s"
        )
        assert model.dtype == dtype
        assert model.source == str(default_model_dir)
        # no heads ship (training/RESULTS.md): fresh heads, w == 0, thoughts off under `auto`
        assert model.config.heads_trained is False
        assert model.mixing_head.net[4].weight.abs().sum() == 0
        heads = ROOT / "results" / "training" / "gsm8k_heads_step200"
        trained = quietstar.load("default", dtype=dtype, heads=heads)
        assert trained.config.heads_trained is True  # trained values, not re-initialised
        assert trained.mixing_head.net[4].weight.abs().sum() > 0
        assert not torch.equal(trained.start_embedding, model.start_embedding)
        tok = model.tokenizer
        ids = [tok.convert_tokens_to_ids(t) for t in ("<|startthought|>", "<|endthought|>")]
        assert ids == [model.start_thought_id, model.end_thought_id]
        assert min(ids) >= tok.vocab_size  # added after the base vocabulary, grown to fit
        assert model.vocab_size == len(tok)


def run_two_conversions(tmp_path, gguf: Path | None) -> None:
    home, go = tmp_path / "home", tmp_path / "go"
    env = dict(
        os.environ, QUIETSTAR_HOME=str(home), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false"
    )
    cmd = [sys.executable, "-c", CHILD, str(go)] + ([str(gguf)] if gguf else [])
    procs = [
        subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    time.sleep(0.5)
    start = time.perf_counter()
    go.touch()
    results = [p.communicate(timeout=300) for p in procs]
    elapsed = time.perf_counter() - start
    print(
        f"\n[default model] two concurrent conversions ({gguf or 'embedded GGUF'}): {elapsed:.1f} s"
    )
    for proc, (_out, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err[-2000:]
    target = home / "models" / f"{default_model.DEFAULT_NAME}-bf16"
    assert {out.strip() for out, _ in results} == {str(target)}
    assert [p.name for p in (home / "models").iterdir()] == [target.name]  # no temp dirs left
    assert sum("another process converted" in err for _, err in results) == 1
    with safe_open(str(target / "model.safetensors"), "pt") as f:
        assert len(list(f.keys())) > 0
    assert (target / "config.json").is_file() and (target / "tokenizer.json").is_file()


def test_concurrent_conversions_leave_one_folder(tmp_path):
    src = make_hf_checkpoint(tmp_path / "hf", "smollm2")
    run_two_conversions(tmp_path, write_tiny_gguf(src, tmp_path / "tiny.gguf"))


@pytest.mark.slow
def test_concurrent_default_conversions_leave_one_folder(tmp_path):
    """The real 135M GGUF twice at once: ~25 s alone on 2 cores, up to a minute when busy."""
    run_two_conversions(tmp_path, None)


def test_conversion_parses_the_gguf_once_and_writes_the_same_files(tmp_path, monkeypatch):
    """`gguf_parsed_once` shares one parse of the file and one tensor-name map per shape between
    transformers' tokenizer, config and weight loading; the folder it writes is byte for byte the
    one transformers writes without it, and gguf's own names are back afterwards."""
    import contextlib

    import gguf

    src = write_tiny_gguf(make_hf_checkpoint(tmp_path / "hf", "smollm2"), tmp_path / "tiny.gguf")
    reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    parses = []
    monkeypatch.setattr(gguf, "GGUFReader", lambda *a: parses.append(a) or reader(*a))
    shared = default_model.convert_gguf(src, tmp_path / "shared")
    assert len(parses) == 1
    monkeypatch.setattr(default_model, "gguf_parsed_once", contextlib.nullcontext)
    plain = default_model.convert_gguf(src, tmp_path / "plain")
    assert len(parses) > 2  # what transformers does on its own: once per use
    names = sorted(p.name for p in plain.iterdir())
    assert names == sorted(p.name for p in shared.iterdir()) and "model.safetensors" in names
    for name in names:
        assert (shared / name).read_bytes() == (plain / name).read_bytes(), name
    monkeypatch.undo()
    assert gguf.GGUFReader is reader and gguf.get_tensor_name_map is name_map
    with default_model.gguf_parsed_once():
        assert gguf.GGUFReader(src) is gguf.GGUFReader(src)
        assert gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2) is gguf.get_tensor_name_map(
            gguf.MODEL_ARCH.LLAMA, 2
        )
    assert gguf.GGUFReader is reader and gguf.get_tensor_name_map is name_map
