"""A broken checkpoint fails with a ValueError that names the file and the problem."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import quietstar

WEIGHTS = "model.safetensors"


def rewrite_weights(directory, edit) -> None:
    path = directory / WEIGHTS
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


def load_error(directory) -> str:
    with pytest.raises(ValueError) as info:
        quietstar.load(directory, dtype=torch.float32)
    return str(info.value)


def test_unsupported_model_type(tiny_checkpoint):
    path = tiny_checkpoint / "config.json"
    path.write_text(json.dumps({"model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 4}))
    message = load_error(tiny_checkpoint)
    assert "config.json" in message and "'gpt2'" in message


def test_malformed_config_json(tiny_checkpoint):
    (tiny_checkpoint / "config.json").write_text('{"model_type": "llama",')
    message = load_error(tiny_checkpoint)
    assert "config.json" in message and "malformed JSON" in message


def test_missing_directory(tmp_path):
    assert "no such model directory" in load_error(tmp_path / "nowhere")


def test_missing_weights_file(tiny_checkpoint):
    (tiny_checkpoint / WEIGHTS).unlink()
    assert "no model.safetensors" in load_error(tiny_checkpoint)


def test_missing_shard(tiny_checkpoint):
    index = {
        "metadata": {},
        "weight_map": {"model.norm.weight": "model-00001-of-00002.safetensors"},
    }
    (tiny_checkpoint / "model.safetensors.index.json").write_text(json.dumps(index))
    message = load_error(tiny_checkpoint)
    assert "model-00001-of-00002.safetensors" in message and "missing" in message


def test_missing_tensor_is_named(tiny_checkpoint):
    rewrite_weights(tiny_checkpoint, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    message = load_error(tiny_checkpoint)
    assert "missing" in message and "model.layers.1.mlp.up_proj.weight" in message


def test_wrong_shape_names_key_shapes_and_file(tiny_checkpoint):
    rewrite_weights(tiny_checkpoint, lambda t: t.update({"model.norm.weight": torch.ones(63)}))
    message = load_error(tiny_checkpoint)
    assert "'model.norm.weight'" in message
    assert "(63,)" in message and "(64,)" in message
    assert str(tiny_checkpoint / WEIGHTS) in message


def test_unexpected_tensor(tiny_checkpoint):
    rewrite_weights(
        tiny_checkpoint, lambda t: t.update({"model.layers.9.extra.weight": torch.ones(2)})
    )
    message = load_error(tiny_checkpoint)
    assert "unexpected" in message and "model.layers.9.extra.weight" in message


@pytest.mark.parametrize("damage", ["truncated", "garbage_header"])
def test_corrupt_safetensors_names_the_file(tiny_checkpoint, damage):
    path = tiny_checkpoint / WEIGHTS
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(len(b"garbage!").to_bytes(8, "little") + b"garbage!" + data[16:])
    message = load_error(tiny_checkpoint)
    assert str(path) in message


@pytest.fixture
def ours(tmp_path, tiny_model):
    return quietstar.save(tiny_model, tmp_path / "ours")


@pytest.mark.parametrize(
    "edit, needle",
    [
        ({"bogus": 1}, "bogus"),
        ({"n_ahead": 1}, "n_ahead"),
        ({"embedding_scale": -1.0}, "embedding_scale"),
    ],
    ids=["unknown_key", "n_ahead_too_small", "negative_scale"],
)
def test_bad_quietstar_config_names_the_file(ours, edit, needle):
    path = ours / "quietstar_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **edit}))
    message = load_error(ours)
    assert str(path) in message and needle in message


def test_malformed_quietstar_config(ours):
    (ours / "quietstar_config.json").write_text("{")
    assert "quietstar_config.json" in load_error(ours)


def test_quietstar_tensor_missing(ours):
    path = ours / "quietstar.safetensors"
    tensors = load_file(str(path))
    del tensors["talk_head.0.4.weight"]
    save_file(tensors, str(path))
    message = load_error(ours)
    assert "missing" in message and "talk_head.0.4.weight" in message


def test_quietstar_tensors_file_missing(ours):
    (ours / "quietstar.safetensors").unlink()
    assert "quietstar.safetensors missing" in load_error(ours)


def test_quietstar_tensor_wrong_shape(ours):
    path = ours / "quietstar.safetensors"
    tensors = load_file(str(path))
    tensors["start_embedding"] = torch.zeros(3, 64)
    save_file(tensors, str(path))
    message = load_error(ours)
    assert "'start_embedding'" in message and "(3, 64)" in message and "(2, 64)" in message
    assert str(path) in message
