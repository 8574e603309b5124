"""Helpers shared by every test folder: tiny random Llama-family checkpoints with a byte-level
tokenizer, and mixing heads made to matter. Imported as `tests.support`.

The tiny-model fixtures load on `DEVICE` (QUIETSTAR_TEST_DEVICE, default cpu), so the engine and
model-core tests can run on CUDA (`benchmarks/gpu_check.sh`)."""

from __future__ import annotations

from pathlib import Path

import torch

from quietstar.env import device_for_tests

DEVICE = device_for_tests()

TINY = dict(
    vocab_size=300,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
)


def byte_tokenizer():
    """A 256-byte + specials tokenizer (nanochat's ByteTokenizer idea, as an HF fast tokenizer)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def make_hf_checkpoint(path: Path, family: str = "llama", seed: int = 0, **overrides) -> Path:
    """Write a tiny random HF checkpoint of `family` (llama, llama3, mistral, qwen2) to `path`."""
    import transformers

    torch.manual_seed(seed)
    cfg = dict(TINY, **overrides)
    if family == "llama":
        config = transformers.LlamaConfig(**cfg, tie_word_embeddings=False)
    elif family == "llama3":
        config = transformers.LlamaConfig(
            **cfg,
            rope_theta=500000.0,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
        )
    elif family == "mistral":
        config = transformers.MistralConfig(**cfg, sliding_window=None)
    elif family == "qwen2":
        config = transformers.Qwen2Config(**cfg, tie_word_embeddings=True)
    elif family == "smollm2":
        config = transformers.LlamaConfig(**cfg, tie_word_embeddings=True, rope_theta=100000.0)
    else:
        raise ValueError(family)
    model = transformers.AutoModelForCausalLM.from_config(config).float()
    with torch.no_grad():  # HF zero-inits biases; make them matter
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.02)
    model.save_pretrained(str(path))
    byte_tokenizer().save_pretrained(str(path))
    return path


def randomize_heads(model, seed: int = 0, scale: float = 0.5) -> None:
    """Give the mixing head a non-zero output layer (and meta vectors noise) so thoughts matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.mixing_head.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        model.mixing_head.net[4].weight.mul_(scale * 10)
        for p in (model.start_embedding, model.end_embedding):
            p.add_((torch.randn(p.shape, generator=g) * 0.01).to(p.device))
