"""Inverse-CDF categorical sampling draws the right distribution and never a zero-probability id."""

from __future__ import annotations

import torch

from quietstar.sampling import sample_categorical


def test_frequencies_match_the_distribution():
    probs = torch.tensor([0.1, 0.0, 0.6, 0.3])
    g = torch.Generator().manual_seed(0)
    draws = sample_categorical(probs.expand(40000, 4), g)
    freq = torch.bincount(draws, minlength=4).float() / len(draws)
    assert freq[1] == 0
    assert torch.allclose(freq, probs, atol=0.01), freq


def test_unnormalised_rows_and_masked_ends():
    probs = torch.tensor([[0.0, 2.0, 0.0], [0.0, 0.0, 5.0], [3.0, 0.0, 0.0]])
    g = torch.Generator().manual_seed(1)
    for _ in range(50):
        assert sample_categorical(probs, g).tolist() == [1, 2, 0]


def test_same_seed_same_draws():
    probs = torch.softmax(torch.randn(8, 1000), -1)
    a = sample_categorical(probs, torch.Generator().manual_seed(3))
    b = sample_categorical(probs, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == (8,)
