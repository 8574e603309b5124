"""`ThoughtParams.content == "random"`: the content control draws thought tokens uniformly over
the allowed vocabulary (never a meta token), and everything after the draw (START, the tokens,
END, the mixing head) is the served computation: each visible log-prob still equals the no-cache
reference on the thought that was drawn, in decoding and in parallel scoring."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from quietstar import reference, thought_content
from server.engine import ThoughtParams, sampling_params
from tests.engine.engine_support import (
    assert_close,
    make_engine,
    prompt_ids,
    run_to_completion,
    tiny_model,
)
from tests.engine.test_engine_thoughts import generate_one, thinking


def with_thoughts(params, **changes):
    thoughts = ThoughtParams(**{**params.thoughts.__dict__, **changes})
    return type(params)(**{**params.__dict__, "thoughts": thoughts})


def random_thinking(max_tokens: int, L: int, K: int = 1, seed: int = 0):
    return with_thoughts(thinking(max_tokens, L, K, seed), content="random")


def chi2_uniform(drawn: list[int], allowed: list[int]) -> float:
    counts, expected = Counter(drawn), len(drawn) / len(allowed)
    return sum((counts.get(i, 0) - expected) ** 2 / expected for i in allowed)


def test_the_api_spells_the_same_contents_as_the_model_code():
    assert sampling_params.THOUGHT_CONTENTS == thought_content.THOUGHT_CONTENTS


def test_unknown_content_is_refused():
    with pytest.raises(ValueError, match="thought content must be one of"):
        ThoughtParams(enabled=True, content="shuffled")


def test_random_thoughts_decode_like_the_reference_on_the_drawn_tokens():
    model = tiny_model("llama", heads_seed=3)
    prompt = prompt_ids(9, seed=4)
    choice = generate_one(model, prompt, random_thinking(5, 4, K=2, seed=11))
    meta = set(model.masked_token_ids.tolist())
    prefix = list(prompt)
    for i, tok in enumerate(choice.tokens):
        assert len(tok.thought_ids) == 2 and all(len(t) == 4 for t in tok.thought_ids)
        assert not meta & {t for thought in tok.thought_ids for t in thought}, "meta token drawn"
        refs = [reference.thought_aided_logits(model, prefix, t) for t in tok.thought_ids]
        probs = torch.stack([torch.softmax(r.logits, dim=-1) for r in refs]).mean(0)
        assert_close(tok.logprob, probs[tok.token_id].log(), 1e-4, f"position {i} logprob")
        prefix.append(tok.token_id)


def test_random_thoughts_are_uniform_not_the_models_samples():
    """Many draws from one prompt at a low thought temperature, where the model's own samples
    are far from uniform: a chi-square test against uniform over the allowed ids passes for the
    control and fails for the model's samples (so the test can tell them apart)."""
    model = tiny_model("llama", heads_seed=3)
    prompt = prompt_ids(6, seed=5)
    cold = dict(temperature=0.05)
    runs = {
        content: generate_one(
            model, prompt, with_thoughts(thinking(32, 8, K=4, seed=2), content=content, **cold)
        )
        for content in ("random", "model")
    }
    allowed = thought_content.allowed_thought_ids(model).tolist()
    dof = len(allowed) - 1
    bound = dof + 6 * math.sqrt(2 * dof)  # 6 sd above chi2's mean: far beyond chance
    chi2 = {}
    for content, choice in runs.items():
        drawn = [t for tok in choice.tokens for thought in tok.thought_ids for t in thought]
        assert set(drawn) <= set(allowed)
        chi2[content] = chi2_uniform(drawn, allowed)
    assert chi2["random"] < bound, f"control not uniform: chi2 {chi2['random']:.0f} ({dof} dof)"
    assert chi2["model"] > bound, f"model samples look uniform: chi2 {chi2['model']:.0f}"


def test_random_thoughts_in_parallel_scoring_match_the_per_position_reference():
    model = tiny_model("llama", heads_seed=4)
    engine = make_engine(model)
    ids = prompt_ids(10, seed=6)
    L, seed = 3, 21
    params = ThoughtParams(enabled=True, num_tokens=L, num_thoughts=1, content="random")
    out = engine.score(ids, params, seed=seed)
    generator = torch.Generator(device=model.device).manual_seed(seed)
    thoughts = thought_content.random_thoughts(model, (1, len(ids), L), generator)[0]
    expected = reference.score_per_position(model, ids, thoughts.tolist())
    got = torch.tensor(out.logprobs[1:])
    torch.testing.assert_close(got, expected.cpu(), atol=1e-4, rtol=0)
    assert not set(thoughts.flatten().tolist()) & set(model.masked_token_ids.tolist())


def test_a_batch_mixing_random_and_model_thoughts_equals_each_alone():
    """Row masks follow each request's K thought rows: in one batch, the random-content request
    and the model-content one get exactly what each gets alone."""
    model = tiny_model("llama", heads_seed=5)
    prompts = {"random": prompt_ids(7, seed=8), "model": prompt_ids(5, seed=9)}
    params = {
        "random": random_thinking(4, 3, K=2, seed=31),
        "model": thinking(4, 3, K=3, seed=32),
    }
    engine = make_engine(model)
    for name in ("random", "model"):
        engine.add_request(name, prompts[name], params[name])
    together = run_to_completion(engine)
    for name in ("random", "model"):
        alone = generate_one(model, prompts[name], params[name])
        got = together[name, 0]
        assert [t.thought_ids for t in got.tokens] == [t.thought_ids for t in alone.tokens]
        assert [t.token_id for t in got.tokens] == [t.token_id for t in alone.tokens]
        for a, b in zip(got.tokens, alone.tokens):
            assert_close(a.logprob, b.logprob, 1e-5, f"{name} logprob")
