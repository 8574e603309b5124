"""Scheduler: waiting queue, admission into KV slots, and the running list (index == slot).

Every running sequence takes part in every decode step (a base row, thought rows, or both), so a
request never waits for another's longer thoughts: each advances one step per engine step.
"""

from __future__ import annotations

from collections import deque

from .kv_cache import KVCache
from .sequence import Sequence, SequenceStatus


class Scheduler:
    def __init__(self, cache: KVCache):
        self.cache = cache
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # running[i].slot == i

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def admit(self) -> list[Sequence]:
        """Move waiting sequences into free slots (FIFO); they still need their prefill."""
        admitted = []
        while self.waiting and self.cache.can_allocate():
            seq = self.waiting.popleft()
            seq.slot = self.cache.allocate(seq.seq_id)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            admitted.append(seq)
        return admitted

    def release_finished(self) -> None:
        """Free the slots of finished sequences (moving the last slot down into each hole)."""
        for seq in [s for s in self.running if s.is_finished]:
            moved = self.cache.free(seq.slot)
            last = self.running.pop()
            if moved is not None:
                self.running[seq.slot] = last
                last.slot = seq.slot
            seq.slot = None

    def drop_waiting(self, request_id: str) -> list[Sequence]:
        dropped = [s for s in self.waiting if s.request_id == request_id]
        self.waiting = deque(s for s in self.waiting if s.request_id != request_id)
        return dropped

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def check_integrity(self) -> None:
        self.cache.check_integrity()
        assert len(self.running) == self.cache.num_used, "running list and slots disagree"
        for i, seq in enumerate(self.running):
            assert seq.slot == i and self.cache.owners[i] == seq.seq_id, f"slot {i} mislabelled"
