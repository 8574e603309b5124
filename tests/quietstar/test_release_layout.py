"""The official `ezelikman/quietstar-8-ahead` layout (spec §5), in miniature.

A tiny Mistral written exactly like the release: release keys in config.json (§5.2), two shards +
index whose weight_map holds start/end_embedding and talk_head.0.{0,2,4}.* (§5.3), vocab = base
+ 2 with `<|endthought|>` = base and `<|startthought|>` = base + 1 (§1.1, §5.4). Loading applies
the §5.5 fixes; the mix is checked against the §5.5 stock-transformers recipe computed by hand.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import quietstar
from quietstar.reference import thought_aided_logits
from tests.quietstar.logit_checks import assert_logits_close
from tests.support import TINY, byte_tokenizer, make_hf_checkpoint

START, END = "<|startthought|>", "<|endthought|>"
BASE_VOCAB = 259  # the byte tokenizer: 3 specials + 256 bytes
D = TINY["hidden_size"]
RELEASE_KEYS = {  # spec §5.2 custom keys, release values
    "max_thoughts": 10,
    "merged_talk_heads": True,
    "merged_lm_and_talk_heads": False,
    "merged_lm_and_think_heads": True,
    "use_concat_talk_head": True,
    "use_shallow_think": True,
    "use_shallow_talk": False,
    "use_complex_think_head": False,
    "use_complex_talk_head": True,
    "use_weighted_talk_head": True,
}
SHARD1, SHARD2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
PREFIX, THOUGHT = [5, 17, 200, 33, 99, 4], [40, 41, 42, 43, 44]


def quietstar_tensors(head_hidden: int, seed: int = 7) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, std):
        return torch.randn(*shape, generator=g) * std

    return {
        "start_embedding": randn(2, D, std=1e-3),  # row 0 * 100 is the input vector
        "end_embedding": randn(2, D, std=1e-3),
        "talk_head.0.0.weight": randn(head_hidden, 2 * D, std=0.1),
        "talk_head.0.0.bias": randn(head_hidden, std=0.1),
        "talk_head.0.2.weight": randn(head_hidden, head_hidden, std=0.1),
        "talk_head.0.2.bias": randn(head_hidden, std=0.1),
        "talk_head.0.4.weight": randn(1, head_hidden, std=0.5),
    }


def write_release_tokenizer(directory) -> None:
    tok = byte_tokenizer()
    # Swapped order as in every mirror of the release tokenizer (spec §1.1).
    tok.add_special_tokens({"additional_special_tokens": [END, START]})
    tok.save_pretrained(str(directory))
    (directory / "added_tokens.json").write_text(
        json.dumps({END: BASE_VOCAB, START: BASE_VOCAB + 1})
    )
    (directory / "special_tokens_map.json").write_text(
        json.dumps(
            {
                "additional_special_tokens": [END, START],
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
            }
        )
    )


def make_release_checkpoint(directory, head_hidden: int = D, with_heads: bool = True):
    make_hf_checkpoint(directory, "mistral", vocab_size=BASE_VOCAB + 2)
    write_release_tokenizer(directory)
    config = json.loads((directory / "config.json").read_text())
    config.update(RELEASE_KEYS, architectures=["MistralForCausalLM"], model_type="mistral")
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    tensors = load_file(str(directory / "model.safetensors"))
    (directory / "model.safetensors").unlink()
    extra = quietstar_tensors(head_hidden) if with_heads else {}
    tensors.update(extra)
    first = {
        "model.embed_tokens.weight",
        "start_embedding",
        "talk_head.0.0.weight",
        "talk_head.0.0.bias",
    } | {k for k in tensors if k.startswith("model.layers.0.")}
    shards = {
        SHARD1: {k: v for k, v in tensors.items() if k in first},
        SHARD2: {k: v for k, v in tensors.items() if k not in first},
    }
    weight_map = {}
    for name, part in shards.items():
        save_file(part, str(directory / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return directory, extra


@pytest.fixture
def release(tmp_path):
    return make_release_checkpoint(tmp_path / "quietstar-8-ahead")


def test_layout_is_the_release_one(release):
    directory, extra = release
    index = json.loads((directory / "model.safetensors.index.json").read_text())["weight_map"]
    assert {index["start_embedding"], index["talk_head.0.0.weight"]} == {SHARD1}
    assert {index["end_embedding"], index["talk_head.0.4.weight"]} == {SHARD2}
    assert "talk_head.0.4.bias" not in index
    assert not (directory / "model.safetensors").exists()
    assert json.loads((directory / "added_tokens.json").read_text()) == {END: 259, START: 260}
    assert json.loads((directory / "config.json").read_text())["vocab_size"] == BASE_VOCAB + 2


def test_release_loads_trained_tensors_untouched(release):
    directory, stored = release
    model = quietstar.load(directory, dtype=torch.float32)
    # Ids are looked up by string: start is base + 1 in the release tokenizer.
    assert (model.start_thought_id, model.end_thought_id) == (BASE_VOCAB + 1, BASE_VOCAB)
    assert set(model.masked_token_ids.tolist()) == {BASE_VOCAB, BASE_VOCAB + 1}
    assert model.config.heads_trained is True
    assert model.config.n_ahead == 8
    thought_aided_logits(model, PREFIX, THOUGHT)  # the official code re-inits on first forward
    params = dict(model.named_parameters())
    for key, value in stored.items():
        name = key.replace("talk_head.0.", "mixing_head.net.")
        assert torch.equal(params[name].detach(), value), f"{key} changed on load"
    assert bool(model.mixing_head.net[4].weight.abs().sum() > 0)  # not zeroed (spec §2.2)


def hand_mixed_logits(directory, prefix: list[int], thought: list[int]):
    """spec §5.5 with stock transformers: MistralForCausalLM + the 7 tensors read by hand."""
    from transformers import MistralForCausalLM

    hf = MistralForCausalLM.from_pretrained(str(directory), dtype=torch.float32).eval()
    weight_map = json.loads((directory / "model.safetensors.index.json").read_text())["weight_map"]
    t = {}
    for key in quietstar_tensors(1):
        with safe_open(str(directory / weight_map[key]), "pt") as f:
            t[key] = f.get_tensor(key)
    emb = hf.model.embed_tokens
    x = torch.cat(
        [
            emb(torch.tensor(prefix)),
            t["start_embedding"][:1] * 100,
            emb(torch.tensor(thought)),
            t["end_embedding"][:1] * 100,
        ]
    )[None]
    with torch.no_grad():
        h = hf.model(
            inputs_embeds=x, position_ids=torch.arange(x.shape[1])[None]
        ).last_hidden_state[0]
        h_base, h_post = h[len(prefix) - 1], h[-1]
        z = F.relu(
            F.linear(
                torch.cat([h_base, h_post]), t["talk_head.0.0.weight"], t["talk_head.0.0.bias"]
            )
        )
        z = F.relu(F.linear(z, t["talk_head.0.2.weight"], t["talk_head.0.2.bias"]))
        w = F.linear(z, t["talk_head.0.4.weight"])  # (1,), no sigmoid (spec §2.3)
        logits = hf.lm_head((1 - w) * h_base + w * h_post)
    logits[BASE_VOCAB:] = float("-inf")  # spec §1.3: ids >= tokenizer.vocab_size
    return logits, w


@pytest.mark.parametrize("head_hidden", [D, D // 2], ids=["width=d", "width=d/2"])
def test_release_mix_equals_hand_computation(tmp_path, head_hidden):
    directory, _ = make_release_checkpoint(tmp_path / "release", head_hidden=head_hidden)
    model = quietstar.load(directory, dtype=torch.float32)
    assert model.config.mixing_head_hidden == head_hidden
    expected, w_expected = hand_mixed_logits(directory, PREFIX, THOUGHT)
    got = thought_aided_logits(model, PREFIX, THOUGHT)
    assert float(w_expected.abs()) > 0.05  # the head really mixes
    assert torch.allclose(got.w, w_expected, atol=1e-5)
    assert_logits_close(got.logits, expected, atol=1e-4)


def test_release_round_trips_through_our_format(release, tmp_path):
    directory, stored = release
    model = quietstar.load(directory, dtype=torch.float32)
    again = quietstar.load(quietstar.save(model, tmp_path / "ours"), dtype=torch.float32)
    assert again.config == model.config
    assert (again.start_thought_id, again.end_thought_id) == (BASE_VOCAB + 1, BASE_VOCAB)
    for key, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key


def test_release_config_without_heads_is_an_error(tmp_path):
    directory, _ = make_release_checkpoint(tmp_path / "release", with_heads=False)
    with pytest.raises(ValueError, match=r"talk_head\.0\.0\.weight"):
        quietstar.load(directory, dtype=torch.float32)
