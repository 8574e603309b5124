"""The batched visible-token sampler equals a per-row reference (the engine's former sampler,
one sequence at a time) on the same uniform draws, for every mix of per-row parameters; the
counter-based random stream is a pure, well-spread function of (seed, draw, lane)."""

from __future__ import annotations

import pytest
import torch

from quietstar.sampling import sample_with_uniform
from server.engine import SamplingParams
from server.engine.sampler import SamplingBatch, sample_thoughts, sample_visible, uniform
from server.engine.sequence import Sequence

V = 50


def reference_sample(logprobs, params: SamplingParams, counts: dict[int, int], u: float):
    """One row, the obvious way: penalties, temperature, top-k, min-p, top-p, inverse CDF."""
    scores = logprobs.clone()
    for token, n in counts.items():
        scores[token] -= params.presence_penalty + params.frequency_penalty * n
    if params.temperature == 0:
        return int(scores.argmax())
    probs = torch.softmax(scores / params.temperature, dim=-1)
    if 0 < params.top_k < len(probs):
        probs = torch.where(probs >= probs.topk(params.top_k).values[-1], probs, 0.0)
    if params.min_p > 0:
        probs = torch.where(probs >= params.min_p * probs.max(), probs, 0.0)
    if params.top_p < 1:
        sorted_probs, order = probs.sort(descending=True)
        cum = sorted_probs.cumsum(-1)
        drop = cum - sorted_probs > params.top_p * cum[-1]
        probs = probs.scatter(0, order[drop], 0.0)
    cdf = probs.cumsum(-1)
    return min(
        int(torch.searchsorted(cdf, torch.tensor([u]) * cdf[-1], right=True)), len(probs) - 1
    )


def random_params(g: torch.Generator) -> SamplingParams:
    r = lambda: float(torch.rand((), generator=g))  # noqa: E731
    return SamplingParams(
        temperature=0.0 if r() < 0.2 else 0.3 + 1.5 * r(),
        top_k=0 if r() < 0.5 else int(1 + r() * 20),
        top_p=1.0 if r() < 0.5 else 0.2 + 0.8 * r(),
        min_p=0.0 if r() < 0.6 else 0.2 * r(),
        presence_penalty=0.0 if r() < 0.6 else 2 * r() - 0.5,
        frequency_penalty=0.0 if r() < 0.6 else r(),
        logprobs=None if r() < 0.5 else int(r() * 4),
    )


def sequences(params: list[SamplingParams], g: torch.Generator) -> list[Sequence]:
    seqs = []
    for i, p in enumerate(params):
        seq = Sequence(f"s{i}", f"r{i}", 0, [1], p, 0, seed=i)
        seq.output_ids = torch.randint(
            0, V, (int(torch.randint(0, 6, (), generator=g)),), generator=g
        ).tolist()
        seqs.append(seq)
    return seqs


@pytest.mark.parametrize("trial", range(8))
def test_batched_equals_per_row_reference(trial):
    g = torch.Generator().manual_seed(trial)
    params = [random_params(g) for _ in range(12)]
    seqs = sequences(params, g)
    logprobs = torch.log_softmax(torch.randn(len(seqs), V, generator=g) * 3, dim=-1)
    logprobs[:, 7] = float("-inf")  # a masked meta-token
    batch = SamplingBatch.of(seqs, V, "cpu")
    got = sample_visible(logprobs, batch)
    for i, (seq, p) in enumerate(zip(seqs, params)):
        counts = {t: seq.output_ids.count(t) for t in seq.output_ids}
        want = reference_sample(logprobs[i], p, counts, float(batch.u[i]))
        assert got.token_ids[i] == want, f"row {i}: {p}"
        assert got.logprobs[i] == float(logprobs[i, want])
        if p.logprobs:
            values, ids = logprobs[i].topk(p.logprobs)
            assert got.top_logprobs[i] == list(zip(ids.tolist(), values.tolist()))
        else:
            assert got.top_logprobs[i] is None


def test_each_row_depends_only_on_its_own_sequence():
    g = torch.Generator().manual_seed(11)
    params = [random_params(g) for _ in range(6)]
    logprobs = torch.log_softmax(torch.randn(6, V, generator=g), dim=-1)
    together = sample_visible(logprobs, SamplingBatch.of(sequences(params, g), V, "cpu"))
    g = torch.Generator().manual_seed(11)
    [random_params(g) for _ in range(6)]
    seqs = sequences(params, g)
    for i in range(6):
        alone = sample_visible(logprobs[i : i + 1], SamplingBatch.of([seqs[i]], V, "cpu"))
        assert alone.token_ids[0] == together.token_ids[i]


def test_draw_counter_advances_per_event():
    seq = Sequence("s", "r", 0, [1], SamplingParams(), 0, seed=5)
    a = SamplingBatch.of([seq], V, "cpu").u
    b = SamplingBatch.of([seq], V, "cpu").u
    assert seq.num_draws == 2 and a.item() != b.item()


def test_uniforms_are_a_pure_well_spread_function():
    n = 200_000
    seeds = torch.randint(-(2**62), 2**62, (n,), generator=torch.Generator().manual_seed(0))

    def draw(seeds, draws, lanes):
        return torch.tensor([uniform(*t) for t in zip(seeds, draws, lanes)], dtype=torch.float32)

    seeds, draws, lanes = seeds.tolist(), [i % 977 for i in range(n)], [i % 5 for i in range(n)]
    u = draw(seeds, draws, lanes)
    assert torch.equal(u, draw(seeds, draws, lanes))
    assert float(u.min()) >= 0 and float(u.max()) < 1
    hist = torch.histc(u, bins=10, min=0, max=1) / n
    assert torch.allclose(hist, torch.full((10,), 0.1), atol=0.005), hist
    # consecutive draws of one seed, and neighbouring lanes, are uncorrelated
    one = draw([42] * n, range(n), [0] * n)
    assert abs(float(torch.corrcoef(torch.stack((one[:-1], one[1:])))[0, 1])) < 0.01
    lane = draw([42] * n, [0] * n, range(n))
    assert abs(float(lane.mean()) - 0.5) < 0.005
    # 64-bit seeds: both halves count, negative ones included
    assert len({uniform(s, 0, 0) for s in (1, 1 + 2**32, -1, -(2**63), 2**63 - 1)}) == 5


@pytest.mark.parametrize("temperature", [None, [1.0, 0.5, 2.0, 1.0, 0.7]])
def test_thought_sampler_is_the_inverse_cdf_at_temperature(temperature):
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(5, V, generator=g) * 4
    logits[:, 3] = float("-inf")  # a masked meta-token
    u = torch.rand(5, generator=g)
    t = torch.ones(5) if temperature is None else torch.tensor(temperature)
    got = sample_thoughts(logits.clone(), None if temperature is None else t, u)
    for i in range(5):
        probs = torch.softmax(logits[i] / t[i], -1)
        assert int(got[i]) == int(sample_with_uniform(probs, u[i]))
    draws = sample_thoughts(
        logits[:1].expand(20000, V).clone(), None, torch.rand(20000, generator=g)
    )
    freq = torch.bincount(draws, minlength=V).float() / len(draws)
    assert freq[3] == 0
    assert torch.allclose(freq, torch.softmax(logits[0], -1), atol=0.01)
