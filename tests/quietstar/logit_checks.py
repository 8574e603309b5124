"""Comparing logits that carry -inf masks, NaN-safely.

`(-inf) - (-inf)` is NaN and Python's `max(0, nan)` is 0, so a naive max-abs-diff silently
passes on exactly the entries that matter. Here NaN always fails, the -inf masks must coincide,
and the tolerance applies to the finite entries only, reduced with torch (which propagates NaN).
"""

from __future__ import annotations

import torch


def finite_max_abs_diff(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Max |actual - expected| over entries finite in both; raises if masks or NaNs disagree."""
    a, e = actual.detach().float().cpu(), expected.detach().float().cpu()
    if a.shape != e.shape:
        raise AssertionError(f"shape {tuple(a.shape)} != expected {tuple(e.shape)}")
    for name, t in (("actual", a), ("expected", e)):
        if bool(torch.isnan(t).any()):
            raise AssertionError(f"{name} has {int(torch.isnan(t).sum())} NaN entries")
        if bool(torch.isposinf(t).any()):
            raise AssertionError(f"{name} has +inf entries")
    a_masked, e_masked = torch.isneginf(a), torch.isneginf(e)
    if not torch.equal(a_masked, e_masked):
        where = (a_masked != e_masked).nonzero()[:5].tolist()
        raise AssertionError(f"-inf masks differ at {where} (first 5)")
    finite = ~a_masked
    if not bool(finite.any()):
        return 0.0
    return float((a[finite] - e[finite]).abs().max())


def assert_logits_close(actual: torch.Tensor, expected: torch.Tensor, atol: float = 1e-4) -> None:
    diff = finite_max_abs_diff(actual, expected)
    if not diff <= atol:  # written so that a NaN diff fails too
        raise AssertionError(f"max abs diff {diff:.3g} > {atol:g}")
