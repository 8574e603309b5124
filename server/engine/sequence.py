"""Sequence: one choice of one request, with its thought state machine.

Per visible token with thoughts on (spec §4.4): step 0 feeds the pending visible token (base row)
fused with START, steps 1..L feed the sampled thought tokens, step L+1 feeds END; its output is
mixed with h_base and the next visible token is sampled. `thought_step` is that step index, or -1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import torch

from .outputs import FinishReason, TokenOutput
from .sampling_params import SamplingParams


class SequenceStatus(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    seq_id: str
    request_id: str
    index: int
    prompt_ids: list[int]
    params: SamplingParams
    num_thought_tokens_per_step: int  # L (resolved from the checkpoint when not given)
    generator: torch.Generator
    status: SequenceStatus = SequenceStatus.WAITING
    finish_reason: FinishReason | None = None
    slot: int | None = None
    output_ids: list[int] = field(default_factory=list)
    pending_token: int | None = None  # sampled visible token not yet fed to the model
    h_base: torch.Tensor | None = None  # (d,) hidden state of the last fed visible token
    thought_step: int = -1
    thought_ids: list[list[int]] = field(default_factory=list)  # current thought, K lists
    num_thought_tokens: int = 0
    outbox: list[TokenOutput] = field(default_factory=list)
    is_reported: bool = False  # the finished output has been handed out
    token_counts: dict[int, int] = field(default_factory=dict)

    @property
    def is_thinking(self) -> bool:
        return self.params.thoughts.enabled

    @property
    def num_thoughts(self) -> int:
        return self.params.thoughts.count if self.is_thinking else 1

    @property
    def num_visible_tokens(self) -> int:
        return len(self.output_ids)

    @property
    def is_finished(self) -> bool:
        return self.status == SequenceStatus.FINISHED

    def start_thought(self) -> None:
        self.thought_step = 0
        self.thought_ids = [[] for _ in range(self.num_thoughts)]

    def thought_inputs(self) -> list[int] | None:
        """Token (or meta sentinel) each of the K thought rows feeds this step, or None."""
        from quietstar import END_THOUGHT, START_THOUGHT

        t, L = self.thought_step, self.num_thought_tokens_per_step
        if t < 0:
            return None
        if t == 0:
            return [START_THOUGHT] * self.num_thoughts
        if t <= L:
            return [ids[t - 1] for ids in self.thought_ids]
        return [END_THOUGHT] * self.num_thoughts

    def finish(self, reason: FinishReason) -> None:
        self.status = SequenceStatus.FINISHED
        self.finish_reason = reason
        self.pending_token = None
        self.thought_step = -1
