"""Thoughts off, greedy: the engine decodes the same token ids as transformers' `generate`
(house style 14: the batched engine matches a reference token for token at temperature 0)."""

from __future__ import annotations

import copy

import pytest
import torch

import quietstar
from server.engine import FinishReason, SamplingParams
from tests.engine.engine_support import (
    make_engine,
    prompt_ids,
    run_to_completion,
    tiny_dir,
    tiny_model,
)

NEW_TOKENS = 16


def hf_greedy(directory, prompt: list[int], suppress: list[int]) -> list[int]:
    """transformers' greedy decode of exactly NEW_TOKENS tokens: EOS never ends it (like our
    ignore_eos) and our masked meta-token ids are suppressed (they never win in our engine)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32).eval()
    config = copy.deepcopy(model.generation_config)
    config.eos_token_id = None  # nothing stops it early, and nothing is masked for min length
    config.pad_token_id = 0
    config.do_sample = False
    config.max_new_tokens = config.min_new_tokens = NEW_TOKENS
    vocab = model.config.vocab_size
    config.suppress_tokens = [i for i in suppress if i < vocab] or None
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt]),
            generation_config=config,
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        )
    return out[0, len(prompt) :].tolist()


def engine_greedy(model, prompt: list[int], n: int = 1) -> list[list[int]]:
    engine = make_engine(model, max_num_thoughts=1)
    engine.add_request(
        "r", prompt, SamplingParams(max_tokens=NEW_TOKENS, temperature=0, ignore_eos=True, n=n)
    )
    results = run_to_completion(engine)
    assert engine.cache.num_used == 0
    assert sorted(results) == [("r", i) for i in range(n)]
    for choice in results.values():
        assert choice.finished and choice.finish_reason == FinishReason.LENGTH
    return [results["r", i].token_ids for i in range(n)]


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2"])
def test_greedy_matches_transformers_tiny(family):
    model = tiny_model(family)
    prompt = prompt_ids(12, seed=7)
    (ours,) = engine_greedy(model, prompt)
    assert len(ours) == NEW_TOKENS
    assert ours == hf_greedy(tiny_dir(family), prompt, model.masked_token_ids.tolist())


def test_greedy_matches_transformers_default_model(default_model_dir):
    model = quietstar.load(default_model_dir, dtype=torch.float32)
    prompt = model.tokenizer("The capital of France is")["input_ids"]
    (ours,) = engine_greedy(model, prompt)
    assert len(ours) == NEW_TOKENS
    assert ours == hf_greedy(default_model_dir, prompt, model.masked_token_ids.tolist())


def test_greedy_n2_gives_identical_choices():
    first, second = engine_greedy(tiny_model("llama"), prompt_ids(9, seed=3), n=2)
    assert len(first) == NEW_TOKENS
    assert first == second
