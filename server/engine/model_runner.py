"""ModelRunner: turns scheduled sequences into tensors and runs the Quiet-STaR model.

`prefill` fills a new sequence's slot; `decode` runs one step over every running sequence (base
rows and thought rows in one batch) and returns their final-norm hidden states.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from quietstar import QuietStarModel

from .forward_context import DecodeAttention, DecodeBatch, PrefillAttention
from .kv_cache import KVCache
from .sequence import Sequence


class StepRows(NamedTuple):
    """Hidden states of one decode step, split back per sequence."""

    base: dict[int, torch.Tensor]  # slot -> (d,)
    thoughts: dict[int, torch.Tensor]  # slot -> (K, d)


class ModelRunner:
    def __init__(self, model: QuietStarModel, cache: KVCache):
        self.model, self.cache = model, cache
        self.device = model.device

    @torch.inference_mode()
    def prefill(self, seq: Sequence) -> torch.Tensor:
        """Write the prompt's K/V into the sequence's slot; return h_base of its last token."""
        ids = torch.tensor([seq.prompt_ids], device=self.device)
        positions = torch.arange(len(seq.prompt_ids), device=self.device)[None]
        h = self.model.hidden(ids, positions, PrefillAttention(self.cache, seq.slot, 0))
        self.cache.lengths[seq.slot] = len(seq.prompt_ids)
        return h[0, -1]

    @torch.inference_mode()
    def decode(self, running: list[Sequence]) -> StepRows:
        ids, positions, batch = self._build(running)
        h = self.model.hidden(ids[None], positions[None], DecodeAttention(self.cache, batch))[0]
        self._advance(running)
        base = dict(zip(batch.base_slots.tolist(), h[batch.base_rows]))
        thoughts = {}
        if len(batch.thought_rows):
            th = h[batch.thought_rows]
            slots = batch.thought_slots.tolist()
            start = 0
            while start < len(slots):
                end = start + self._count(slots, start)
                thoughts[slots[start]] = th[start:end]
                start = end
        return StepRows(base, thoughts)

    @staticmethod
    def _count(slots: list[int], start: int) -> int:
        end = start
        while end < len(slots) and slots[end] == slots[start]:
            end += 1
        return end - start

    def _build(self, running: list[Sequence]):
        cache = self.cache
        # Column 0 holds base rows only when some sequence feeds a visible token this step.
        B = int(any(s.pending_token is not None for s in running))
        R = B + max((s.num_thoughts for s in running if s.thought_step >= 0), default=0)
        ids, pos, dense = [], [], []
        base_rows, base_slots, base_pos = [], [], []
        t_rows, t_slots, t_cols, t_steps = [], [], [], []
        prefix_len, thought_len = [], []
        for seq in running:
            slot, plen = seq.slot, cache.lengths[seq.slot]
            if seq.pending_token is not None:
                base_rows.append(len(ids)), base_slots.append(slot), base_pos.append(plen)
                ids.append(seq.pending_token), pos.append(plen), dense.append(slot * R)
                plen += 1
            prefix_len.append(plen)
            inputs = seq.thought_inputs()
            thought_len.append(0 if inputs is None else seq.thought_step + 1)
            for k, token in enumerate(inputs or ()):
                t_rows.append(len(ids)), t_slots.append(slot), t_cols.append(k)
                t_steps.append(seq.thought_step)
                (
                    ids.append(token),
                    pos.append(plen + seq.thought_step),
                    dense.append(slot * R + B + k),
                )
        t = lambda x: torch.tensor(x, dtype=torch.long, device=self.device)  # noqa: E731
        batch = DecodeBatch(
            n=len(running),
            R=R,
            base_cols=B,
            dense_index=t(dense),
            base_rows=t(base_rows),
            base_slots=t(base_slots),
            base_pos=t(base_pos),
            thought_rows=t(t_rows),
            thought_slots=t(t_slots),
            thought_cols=t(t_cols),
            thought_steps=t(t_steps),
            prefix_len=t(prefix_len),
            thought_len=t(thought_len),
            max_prefix=max(prefix_len),
            max_thought=max(thought_len),
        )
        return t(ids), t(pos), batch

    def _advance(self, running: list[Sequence]) -> None:
        """Record what the step wrote into the cache bookkeeping."""
        for seq in running:
            if seq.pending_token is not None:
                self.cache.lengths[seq.slot] += 1
            if seq.thought_step >= 0:
                self.cache.thought_lengths[seq.slot] = seq.thought_step + 1
