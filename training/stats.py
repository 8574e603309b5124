"""Means with cluster-robust standard errors (tokens clustered by document), and deciles.

Tokens of one document are correlated, so a per-token standard error overstates the evidence.
The cluster-robust (CR1) variance of a mean over N tokens in G documents is
G/(G-1) · Σ_g (Σ_{i∈g} (x_i − x̄))² / N²: only between-document variation counts.
"""

from __future__ import annotations

import torch


def cluster_se(values: torch.Tensor, clusters: torch.Tensor) -> float:
    """CR1 standard error of values.mean(), values and clusters (N,) (cluster ids any ints)."""
    x = values.double()
    n = x.numel()
    _, group = torch.unique(clusters, return_inverse=True)
    g = int(group.max()) + 1 if n else 0
    if g < 2:
        return float("nan")
    sums = torch.zeros(g, dtype=torch.float64).index_add_(0, group, x - x.mean())
    return float((g / (g - 1) * (sums**2).sum()).sqrt() / n)


def mean_se(values: torch.Tensor, clusters: torch.Tensor) -> dict[str, float]:
    """{"mean", "se"} with the cluster-robust standard error."""
    return {"mean": float(values.double().mean()), "se": cluster_se(values, clusters)}


def paired(a: torch.Tensor, b: torch.Tensor, clusters: torch.Tensor) -> dict[str, float]:
    """Mean of a − b per token, with its cluster-robust standard error and z = mean / se."""
    out = mean_se(a.double() - b.double(), clusters)
    out["z"] = out["mean"] / out["se"] if out["se"] > 0 else float("nan")
    return out


def decile_edges(reference: torch.Tensor) -> torch.Tensor:
    """The 9 inner decile boundaries of a reference sample (N,) -> (9,)."""
    q = torch.linspace(0.1, 0.9, 9, dtype=torch.float64)
    return torch.quantile(reference.double(), q)


def assign_deciles(values: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Decile index 0..9 of each value given boundaries from `decile_edges`."""
    return torch.bucketize(values.double(), edges, right=True)
