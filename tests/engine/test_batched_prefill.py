"""Batched prefill: prompts admitted together are packed into one forward (model_runner.prefill)
and give the same hidden states and K/V as prompts prefilled one at a time, and requests that
arrive together decode the same tokens, thoughts and log-probs (fp32, 1e-5) as each alone and as
transformers' forward over the same ids."""

from __future__ import annotations

import pytest
import torch

from server.engine import SamplingParams, ThoughtParams
from server.engine import model_runner as runner_module
from server.engine.model_runner import prefill_groups
from tests.engine.engine_support import (
    make_engine,
    prompt_ids,
    run_to_completion,
    tiny_dir,
    tiny_model,
)

LENGTHS = [5, 17, 1, 9]
ATOL = 1e-5


def admitted(engine, prompts: list[list[int]]):
    """Sequences of `prompts`, in their slots, not yet prefilled."""
    for i, prompt in enumerate(prompts):
        engine.add_request(f"r{i}", prompt, SamplingParams(max_tokens=4))
    seqs = engine.scheduler.admit()
    assert len(seqs) == len(prompts)
    return seqs


def count_forwards(model) -> list[int]:
    """Rows of every model.hidden call from now on."""
    calls: list[int] = []
    hidden = model.hidden

    def counting(ids, positions, attention):
        calls.append(ids.shape[1])
        return hidden(ids, positions, attention)

    model.hidden = counting
    return calls


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize(
    ("budget", "rows"), [(4096, [32]), (20, [5, 18, 9])], ids=["one-forward", "token-budget"]
)
def test_packed_prefill_matches_one_at_a_time(family, budget, rows, monkeypatch):
    monkeypatch.setattr(runner_module, "PREFILL_TOKENS", budget)
    prompts = [prompt_ids(n, seed=n) for n in LENGTHS]
    together, alone = make_engine(tiny_model(family)), make_engine(tiny_model(family))
    seqs_t, seqs_a = admitted(together, prompts), admitted(alone, prompts)
    forwards = count_forwards(together.model)
    h_together = together.runner.prefill(seqs_t)
    assert forwards == rows  # rows per forward: prompts packed up to the budget
    h_alone = torch.cat([alone.runner.prefill([seq]) for seq in seqs_a])
    torch.testing.assert_close(h_together, h_alone, atol=ATOL, rtol=0)
    for st, sa, n in zip(seqs_t, seqs_a, LENGTHS):
        assert together.cache.lengths[st.slot] == alone.cache.lengths[sa.slot] == n
        for cache_t, cache_a in (
            (together.cache.k, alone.cache.k),
            (together.cache.v, alone.cache.v),
        ):
            got, want = cache_t[:, st.slot, :, :n], cache_a[:, sa.slot, :, :n]
            torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def test_prefill_groups_keep_order_and_budget():
    class Seq:
        def __init__(self, n):
            self.prompt_ids = [0] * n

    seqs = [Seq(n) for n in (3, 4, 10, 1, 1, 2)]
    groups = prefill_groups(seqs, 8)
    assert [[len(s.prompt_ids) for s in g] for g in groups] == [[3, 4], [10], [1, 1, 2]]
    assert [s for g in groups for s in g] == seqs


def _requests() -> list[tuple[list[int], SamplingParams]]:
    off = dict(max_tokens=6, temperature=0, ignore_eos=True, logprobs=2)
    on = ThoughtParams(enabled=True, num_tokens=3, num_thoughts=2, include=True)
    return [
        (prompt_ids(5, seed=1), SamplingParams(**off)),
        (prompt_ids(17, seed=2), SamplingParams(**off)),
        (prompt_ids(1, seed=3), SamplingParams(**{**off, "temperature": 1.0}, seed=11)),
        (prompt_ids(9, seed=4), SamplingParams(**off, seed=5, thoughts=on)),
    ]


def _run(engine, requests, ids) -> dict:
    for rid, (prompt, params) in zip(ids, requests):
        engine.add_request(rid, prompt, params)
    return run_to_completion(engine)


def test_requests_arriving_together_decode_as_each_alone():
    requests = _requests()
    model = tiny_model("llama", heads_seed=0)  # non-zero mixing: thoughts change the tokens
    engine = make_engine(model)
    forwards = count_forwards(model)
    together = _run(engine, requests, [f"r{i}" for i in range(len(requests))])
    assert forwards[0] == sum(len(p) for p, _ in requests)  # one prefill forward for all four
    for i, request in enumerate(requests):
        alone = _run(make_engine(tiny_model("llama", heads_seed=0)), [request], [f"r{i}"])
        t, a = together[f"r{i}", 0], alone[f"r{i}", 0]
        assert t.token_ids == a.token_ids and len(t.token_ids) == 6
        assert t.thoughts == a.thoughts
        for x, y in zip(t.tokens, a.tokens):
            assert x.logprob == pytest.approx(y.logprob, abs=ATOL)
            assert [i for i, _ in x.top_logprobs] == [i for i, _ in y.top_logprobs]
            if x.mixing_weights is not None:
                assert x.mixing_weights == pytest.approx(y.mixing_weights, abs=ATOL)
    assert together["r3", 0].thoughts[0] is not None  # the thoughts-on request did think


def test_greedy_logprobs_of_requests_together_match_transformers():
    """Thoughts off: every sampled token's log-prob equals transformers' teacher-forced
    log-softmax (meta-tokens masked as ours are) at its position."""
    from transformers import AutoModelForCausalLM

    requests = [(p, s) for p, s in _requests() if not s.thoughts.enabled and s.temperature == 0]
    model = tiny_model("llama")
    results = _run(make_engine(model), requests, [f"r{i}" for i in range(len(requests))])
    hf = AutoModelForCausalLM.from_pretrained(str(tiny_dir("llama")), dtype=torch.float32).eval()
    masked = [i for i in model.masked_token_ids.tolist() if i < hf.config.vocab_size]
    for i, (prompt, _) in enumerate(requests):
        choice = results[f"r{i}", 0]
        ids = prompt + choice.token_ids
        with torch.no_grad():
            logits = hf(torch.tensor([ids])).logits[0].float()
        logits[:, masked] = float("-inf")
        logprobs = torch.log_softmax(logits, dim=-1)
        start = len(prompt) - 1
        want = [logprobs[start + j, t].item() for j, t in enumerate(choice.token_ids)]
        assert choice.token_ids == [logprobs[start + j].argmax().item() for j in range(6)]
        assert [t.logprob for t in choice.tokens] == pytest.approx(want, abs=ATOL)
