"""Our compact backbone equals transformers' model, family by family, in fp32 (spec §0 notation:
h is the final-norm hidden state; logits = lm_head(h))."""

from __future__ import annotations

import pytest
import torch

import quietstar
from quietstar.llama import DenseCausalAttention
from tests.quietstar.logit_checks import assert_logits_close
from tests.support import DEVICE, make_hf_checkpoint

FAMILIES = ["llama", "llama3", "mistral", "qwen2", "smollm2"]


def backbone_logits(model, ids: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
    positions = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
    with torch.no_grad():
        h = model.hidden(ids, positions, DenseCausalAttention(key_mask))
        return model.backbone.lm_head(h).float()


def hf_model(directory):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32)
    return model.to(DEVICE).eval()


@pytest.mark.parametrize("family", FAMILIES)
def test_backbone_matches_transformers(tmp_path, family):
    directory = make_hf_checkpoint(tmp_path / family, family)
    ours, ref = quietstar.load(directory, dtype=torch.float32, device=DEVICE), hf_model(directory)
    vocab = ref.config.vocab_size
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 259, (3, 80), generator=g).to(DEVICE)  # > llama3's original context 64
    expected = ref(ids).logits
    assert_logits_close(backbone_logits(ours, ids)[..., :vocab], expected, atol=1e-4)
    # The tied families really share the matrix; the untied ones really don't.
    tied = ours.backbone.lm_head.weight is ours.backbone.embed_tokens.weight
    assert tied == bool(ref.config.tie_word_embeddings)


def test_right_padding_matches_transformers(tmp_path):
    directory = make_hf_checkpoint(tmp_path / "qwen2", "qwen2")
    ours, ref = quietstar.load(directory, dtype=torch.float32, device=DEVICE), hf_model(directory)
    ids = torch.tensor([[5, 17, 200, 33, 99, 4, 250, 7], [9, 8, 7, 6, 2, 2, 2, 2]], device=DEVICE)
    mask = torch.tensor([[1] * 8, [1] * 4 + [0] * 4], device=DEVICE)
    expected = ref(ids, attention_mask=mask).logits
    got = backbone_logits(ours, ids, mask.bool())[..., : ref.config.vocab_size]
    real = mask.bool()
    assert_logits_close(got[real], expected[real], atol=1e-4)


def test_default_model_matches_transformers(default_model_dir):
    ours = quietstar.load(default_model_dir, dtype=torch.float32, device=DEVICE)
    ref = hf_model(default_model_dir)
    tok = ours.tokenizer
    prompt = tok("The capital of France is Paris, and the capital of Italy is")["input_ids"]
    ids = torch.tensor([prompt, prompt[::-1]], device=DEVICE)
    expected = ref(ids).logits
    assert_logits_close(backbone_logits(ours, ids)[..., : ref.config.vocab_size], expected, 1e-4)
