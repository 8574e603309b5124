"""`quietstar convert SRC OUT [--gguf] [--dtype]` and `quietstar convert default`."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from safetensors import safe_open

import quietstar
from quietstar.cli import main as cli_main
from quietstar.convert import build_parser, main
from tests.quietstar.test_release_layout import make_release_checkpoint
from tests.quietstar.tiny_gguf import write_tiny_gguf
from tests.support import make_hf_checkpoint, randomize_heads

PREFIX, THOUGHT = [5, 17, 200, 33], [40, 41, 42]


def file_dtypes(path) -> set[str]:
    with safe_open(str(path), "pt") as f:
        return {f.get_slice(k).get_dtype() for k in f.keys()}


def assert_same_state(a, b) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_every_flag_has_help():
    for action in build_parser()._actions:
        if not isinstance(action, argparse._HelpAction):
            assert action.help and action.help.strip(), action.dest


def test_plain_hf_folder_gets_fresh_heads_in_bf16(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([str(tiny_checkpoint), str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert file_dtypes(out / "model.safetensors") == {"BF16"}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert file_dtypes(out / "quietstar.safetensors") == {"F32"}
    converted = quietstar.load(out, dtype=torch.bfloat16)
    original = quietstar.load(tiny_checkpoint, dtype=torch.bfloat16)
    assert converted.config.heads_trained is False
    assert_same_state(converted.backbone, original.backbone)
    assert torch.equal(converted.start_embedding, original.start_embedding)  # the '---' init
    last = converted.mixing_head.net[4].weight
    assert torch.equal(last, torch.zeros_like(last))  # w == 0 (spec §2.2)


def test_our_checkpoint_carries_heads_bit_exactly(tiny_model, tmp_path):
    randomize_heads(tiny_model, seed=4)
    src = quietstar.save(tiny_model, tmp_path / "src")
    assert cli_main(["convert", str(src), str(tmp_path / "out"), "--dtype", "fp32"]) == 0
    assert_same_state(quietstar.load(tmp_path / "out", dtype=torch.float32), tiny_model)


def test_release_layout_converts_with_trained_heads(tmp_path):
    directory, stored = make_release_checkpoint(tmp_path / "release")
    assert main([str(directory), str(tmp_path / "out"), "--dtype", "fp32"]) == 0
    model = quietstar.load(tmp_path / "out", dtype=torch.float32)
    assert model.config.heads_trained is True
    assert (model.start_thought_id, model.end_thought_id) == (260, 259)
    assert torch.equal(model.start_embedding.detach(), stored["start_embedding"])
    assert torch.equal(model.mixing_head.net[4].weight.detach(), stored["talk_head.0.4.weight"])


def test_gguf_source(tmp_path):
    src = make_hf_checkpoint(tmp_path / "hf", "smollm2")
    gguf_file = write_tiny_gguf(src, tmp_path / "tiny.gguf")
    assert main([str(gguf_file), str(tmp_path / "out"), "--gguf"]) == 0
    converted = quietstar.load(tmp_path / "out", dtype=torch.bfloat16)
    original = quietstar.load(src, dtype=torch.bfloat16)
    assert_same_state(converted.backbone, original.backbone)  # F32 GGUF -> bf16, same rounding
    text = "hello world ---"
    assert converted.tokenizer.encode(text) == original.tokenizer.encode(text)
    assert not list(tmp_path.glob("quietstar-gguf-*"))


def test_default_without_out_prepares_the_cache(default_model_dir, capsys):
    assert main(["default"]) == 0
    out = capsys.readouterr().out
    assert f"default model ready: {default_model_dir}" in out and "took" in out


def test_out_is_required_for_other_sources(tiny_checkpoint, capsys):
    with pytest.raises(SystemExit) as info:
        main([str(tiny_checkpoint)])
    assert info.value.code == 2
    assert "OUT is required" in capsys.readouterr().err


def test_bad_source_is_an_error_not_a_traceback(tmp_path, capsys):
    assert main([str(tmp_path / "missing"), str(tmp_path / "out")]) == 1
    assert "no such model directory" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.gguf"), str(tmp_path / "out")]) == 1
    assert "no such GGUF file" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
