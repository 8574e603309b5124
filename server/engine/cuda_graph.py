"""CUDA graphs for the padded decode step: one graph per (slots bucket, columns) shape, captured
on first use and replayed with the step's inputs copied into persistent buffers.

Only the model forward is captured (embedding, layers, final norm; the KV cache is written in
place inside it); logits, mixing and sampling run eagerly on the same device after the replay.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from .attention import DecodeBatch

Forward = Callable[[torch.Tensor, torch.Tensor, DecodeBatch], torch.Tensor]


class _Graph:
    """One captured forward with its static inputs and output."""

    def __init__(self, forward: Forward, ids, positions, batch: DecodeBatch, pool):
        self.ids, self.positions = ids.clone(), positions.clone()
        self.batch = dataclasses.replace(batch, **_tensors(batch, clone=True))
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up outside the graph (allocator, kernels)
            for _ in range(2):
                forward(self.ids, self.positions, self.batch)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):
            self.out = forward(self.ids, self.positions, self.batch)

    def replay(self, ids, positions, batch: DecodeBatch) -> torch.Tensor:
        self.ids.copy_(ids)
        self.positions.copy_(positions)
        for name, value in _tensors(batch).items():
            getattr(self.batch, name).copy_(value)
        self.graph.replay()
        return self.out


class DecodeGraphs:
    def __init__(self, forward: Forward):
        self.forward = forward
        self.graphs: dict[tuple[int, int], _Graph] = {}
        self.pool = None

    def run(self, ids, positions, batch: DecodeBatch) -> torch.Tensor:
        """(N, d) hidden states of a padded step. The output buffer is reused by the next replay
        of the same shape: read it (index it into a new tensor) before then."""
        key = (batch.num_slots, batch.R)
        if key not in self.graphs:
            self.graphs[key] = _Graph(self.forward, ids, positions, batch, self.pool)
            self.pool = self.pool or self.graphs[key].graph.pool()
        return self.graphs[key].replay(ids, positions, batch)


def _tensors(batch: DecodeBatch, clone: bool = False) -> dict[str, torch.Tensor]:
    fields = {f.name: getattr(batch, f.name) for f in dataclasses.fields(batch)}
    return {k: v.clone() if clone else v for k, v in fields.items() if isinstance(v, torch.Tensor)}
