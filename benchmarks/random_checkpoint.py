"""Random-weight checkpoints of real model shapes, written in Hugging Face format so that the
project's own loader (`quietstar.load`) reads them as it reads a downloaded model.

Timing runs need the shape, not the weights: the weights are drawn on the target device in the
target dtype (a 7B model in bf16 takes seconds on a GPU), written as safetensors shards with an
index, and paired with a byte-level tokenizer (tests/support.py's), so nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

# The shapes timed by benchmarks/gpu_check.py; the tiny ones stand in for them in its --dry mode.
SHAPES: dict[str, dict] = {
    # SmolLM2-135M-Instruct, the default model.
    "smollm2-135m": dict(
        model_type="llama",
        hidden_size=576,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        intermediate_size=1536,
        vocab_size=49152,
        tie_word_embeddings=True,
        rope_theta=100000.0,
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
    ),
    # Mistral-7B-v0.1, the base of the released quietstar-8-ahead.
    "mistral-7b": dict(
        model_type="mistral",
        hidden_size=4096,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        intermediate_size=14336,
        vocab_size=32000,
        tie_word_embeddings=False,
        rope_theta=10000.0,
        max_position_embeddings=32768,
        sliding_window=4096,
        rms_norm_eps=1e-5,
    ),
    "tiny-llama": dict(
        model_type="llama",
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        vocab_size=320,
        tie_word_embeddings=True,
        max_position_embeddings=1024,
    ),
    "tiny-mistral": dict(
        model_type="mistral",
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        vocab_size=320,
        tie_word_embeddings=False,
        max_position_embeddings=1024,
        sliding_window=None,
    ),
}


def hf_config(shape: str):
    import transformers

    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
    settings = dict(SHAPES[shape])
    classes = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig}
    return classes[settings.pop("model_type")](**settings)


def parameter_shapes(config) -> dict[str, tuple[int, ...]]:
    """Checkpoint key -> shape, from transformers' own model built on the meta device (no
    memory); a tied LM head is listed once, as the embedding."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


def write_random_checkpoint(
    directory: Path,
    shape: str,
    dtype: torch.dtype = torch.bfloat16,
    device: str = "cpu",
    seed: int = 0,
    shard_bytes: int = 4 << 30,
) -> Path:
    """Write config.json, safetensors shards + index and a byte tokenizer to `directory`.
    Matrices ~ N(0, 0.02) (transformers' initializer range), norm weights 1, biases 0."""
    from safetensors.torch import save_file

    from tests.support import byte_tokenizer

    directory.mkdir(parents=True, exist_ok=True)
    config = hf_config(shape)
    generator = torch.Generator(device=device).manual_seed(seed)
    weight_map: dict[str, str] = {}
    shard: dict[str, torch.Tensor] = {}
    total = 0

    def flush() -> None:
        name = f"model-{len(set(weight_map.values())) + 1:05d}.safetensors"
        save_file(shard, str(directory / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
        shard.clear()

    for key, size in parameter_shapes(config).items():
        t = torch.empty(size, dtype=dtype, device=device)
        if key.endswith("norm.weight"):
            t.fill_(1.0)
        elif key.endswith("bias"):
            t.zero_()
        else:
            t.normal_(0.0, 0.02, generator=generator)
        shard[key] = t.cpu()
        total += t.numel() * t.element_size()
        if sum(x.numel() * x.element_size() for x in shard.values()) >= shard_bytes:
            flush()
    if shard:
        flush()
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
    config.save_pretrained(str(directory))
    byte_tokenizer().save_pretrained(str(directory))
    return directory


def weight_bytes_per_step(model) -> int:
    """Bytes of weights a batch-1 decode step must read: every parameter once, except the input
    embedding table of an untied model (one row of it is read)."""
    backbone = model.backbone
    embedding = backbone.embed_tokens.weight
    tied = backbone.lm_head.weight is embedding
    total = 0
    for p in {id(p): p for p in model.parameters()}.values():
        if p is embedding and not tied:
            continue
        total += p.numel() * p.element_size()
    return total
