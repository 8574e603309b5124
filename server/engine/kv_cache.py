"""KV cache: prefix slots plus thought branches, allocated up front (bounded memory).

Prefix K/V live in `k[layer, slot, kv_head, position]`; a request's K parallel thoughts live in
`tk[layer, slot, thought, kv_head, step]` and attend the prefix by slot, so the prefix is never
copied per thought or per step. Running sequences always hold slots 0..n-1 (freeing a slot moves
the last one down), so the batch's prefix K/V is a view, not a gather. One extra slot past the
last (`scratch_slot`) takes the writes of padding rows and is never read.
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(
        self,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        max_seqs: int,
        max_len: int,
        max_num_thoughts: int,
        max_thought_len: int,
        dtype,
        device,
    ):
        self.max_seqs, self.max_len = max_seqs, max_len
        self.max_num_thoughts, self.max_thought_len = max_num_thoughts, max_thought_len
        self.scratch_slot = max_seqs
        shape = (num_layers, max_seqs + 1, num_kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        tshape = (
            num_layers,
            max_seqs + 1,
            max_num_thoughts,
            num_kv_heads,
            max_thought_len,
            head_dim,
        )
        self.tk = torch.zeros(tshape, dtype=dtype, device=device)
        self.tv = torch.zeros(tshape, dtype=dtype, device=device)
        self.owners: list[str] = []  # slot i -> sequence id; slots are 0..len-1
        self.lengths: list[int] = []  # prefix positions written, per slot
        self.thought_lengths: list[int] = []  # thought steps written, per slot (0: cropped)

    @property
    def num_used(self) -> int:
        return len(self.owners)

    def can_allocate(self) -> bool:
        return self.num_used < self.max_seqs

    def allocate(self, seq_id: str) -> int:
        """Take the next free slot (the new last one); its contents are stale until written."""
        if not self.can_allocate():
            raise RuntimeError("KV cache full")
        self.owners.append(seq_id)
        self.lengths.append(0)
        self.thought_lengths.append(0)
        return self.num_used - 1

    def free(self, slot: int) -> tuple[str, int] | None:
        """Release `slot`. If it was not the last, the last slot's K/V (prefix and thoughts) move
        into it; returns (moved sequence id, its new slot) so the caller can update it."""
        last = self.num_used - 1
        moved = None
        if slot != last:
            n, t = self.lengths[last], self.thought_lengths[last]
            self.k[:, slot, :, :n] = self.k[:, last, :, :n]
            self.v[:, slot, :, :n] = self.v[:, last, :, :n]
            if t:
                self.tk[:, slot, :, :, :t] = self.tk[:, last, :, :, :t]
                self.tv[:, slot, :, :, :t] = self.tv[:, last, :, :, :t]
            for arr in (self.owners, self.lengths, self.thought_lengths):
                arr[slot] = arr[last]
            moved = (self.owners[slot], slot)
        for arr in (self.owners, self.lengths, self.thought_lengths):
            arr.pop()
        return moved

    def record_prefill(self, slot: int, length: int) -> None:
        """A prefill wrote prefix positions [0, length) of `slot`."""
        self.lengths[slot] = length

    def record(self, prefix_lengths: list[int], thought_lengths: list[int]) -> None:
        """A decode step over every used slot wrote up to these lengths (one entry per slot)."""
        if len(prefix_lengths) != self.num_used or len(thought_lengths) != self.num_used:
            raise ValueError("a decode step must cover every used slot")
        self.lengths, self.thought_lengths = list(prefix_lengths), list(thought_lengths)

    def branch(self, slot: int) -> None:
        """Start thought rows for `slot` (they will attend its whole current prefix). No copy."""
        self.thought_lengths[slot] = 0

    def crop(self, slot: int) -> None:
        """Drop the slot's thought K/V (spec §4.4 step 5); the prefix stays valid. No copy."""
        self.thought_lengths[slot] = 0

    def check_integrity(self) -> None:
        """Raise AssertionError if the bookkeeping is inconsistent."""
        n = self.num_used
        assert len(self.lengths) == n == len(self.thought_lengths), "per-slot arrays disagree"
        assert n <= self.max_seqs, "more slots used than exist"
        assert len(set(self.owners)) == n, "a sequence holds two slots"
        assert all(0 <= x <= self.max_len for x in self.lengths), "prefix length out of range"
        assert all(0 <= x <= self.max_thought_len for x in self.thought_lengths), (
            "thought length out of range"
        )
