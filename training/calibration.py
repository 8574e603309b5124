"""The cheapest things that could explain a small NLL gain: a calibrated base model.

Two one-parameter fits on the training split (never on the evaluated tokens):
- temperature: p ∝ exp(z / τ), τ chosen on a fine log grid (one pass, NLL summed per τ);
- unigram blend: p = (1 - α) p_base + α u, u the smoothed unigram distribution of the split's
  tokens (meta tokens excluded), α in [0, 1] by golden-section search (the NLL is convex in α).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# 1.7 % steps from 0.6 to 1.8, plus 1 itself (so the fit is never worse than the raw base)
TEMPERATURES = torch.cat(
    (torch.exp(torch.linspace(math.log(0.6), math.log(1.8), 67)), torch.ones(1))
)


def temperature_nll(logits: torch.Tensor, targets: torch.Tensor, tau: float) -> torch.Tensor:
    """NLL of `targets` (N,) under softmax(logits / tau), logits (N, V) -> (N,)."""
    z = logits.float() / tau
    return torch.logsumexp(z, dim=-1) - z.gather(-1, targets[:, None]).squeeze(-1)


def temperature_grid_sums(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed NLL of the (N,) targets at every grid temperature -> (len(TEMPERATURES),)."""
    return torch.stack([temperature_nll(logits, targets, float(t)).sum() for t in TEMPERATURES])


def unigram(counts: torch.Tensor, masked_ids: torch.Tensor) -> torch.Tensor:
    """Add-half smoothed unigram probabilities over the vocabulary, masked ids at 0, (V,)."""
    u = counts.double() + 0.5
    u[masked_ids] = 0.0
    return u / u.sum()


def blend_nll(p_base: torch.Tensor, p_unigram: torch.Tensor, alpha: float) -> torch.Tensor:
    """-log((1 - α) p_base + α u) per token, from the targets' probabilities (N,)."""
    return -torch.log((1 - alpha) * p_base.double() + alpha * p_unigram.double())


def fit_alpha(p_base: torch.Tensor, p_unigram: torch.Tensor, iterations: int = 80) -> float:
    """Golden-section search for the α in [0, 1] that minimises the mean blend NLL."""
    lo, hi = 0.0, 1.0
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(iterations):
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if blend_nll(p_base, p_unigram, a).mean() <= blend_nll(p_base, p_unigram, b).mean():
            hi = b
        else:
            lo = a
    return (lo + hi) / 2


@dataclass
class Calibration:
    """The fitted parameters and their NLL on the split they were fitted on."""

    temperature: float
    alpha: float
    unigram: torch.Tensor  # (V,)
    fit_tokens: int
    fit_base_nll: float
    fit_temperature_nll: float
    fit_unigram_nll: float

    def summary(self) -> dict[str, float]:
        return {
            "temperature": self.temperature,
            "unigram_alpha": self.alpha,
            "fit_tokens": self.fit_tokens,
            "fit_base_nll": self.fit_base_nll,
            "fit_temperature_nll": self.fit_temperature_nll,
            "fit_unigram_nll": self.fit_unigram_nll,
        }


def fit(
    grid_sums: torch.Tensor, p_base: torch.Tensor, targets: torch.Tensor, u: torch.Tensor
) -> Calibration:
    """From the fit split's per-τ NLL sums, its targets (N,) and their base probabilities (N,),
    and the unigram distribution u (V,) of the training split."""
    n = len(targets)
    best = int(grid_sums.argmin())
    alpha = fit_alpha(p_base, u[targets])
    return Calibration(
        temperature=float(TEMPERATURES[best]),
        alpha=alpha,
        unigram=u,
        fit_tokens=n,
        fit_base_nll=float(-torch.log(p_base.double()).mean()),
        fit_temperature_nll=float(grid_sums[best] / n),
        fit_unigram_nll=float(blend_nll(p_base, u[targets], alpha).mean()),
    )
