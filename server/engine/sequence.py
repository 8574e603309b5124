"""Sequence: one choice of one request, with its thought state machine.

Per visible token with thoughts on (spec §4.4), a sequence feeds L + 2 decode steps:
step 0 feeds the pending visible token (base row) fused with START on its K thought rows,
steps 1..L feed the sampled thought tokens, step L + 1 feeds END, whose output is mixed with
h_base to sample the next visible token. `thought_step` is the step being fed, or -1.
With thoughts off, each step feeds the pending visible token and samples the next one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import NamedTuple

import torch

from quietstar import END_THOUGHT, START_THOUGHT

from .outputs import FinishReason, TokenOutput
from .sampling_params import SamplingParams


class SequenceStatus(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Action(Enum):
    """What the engine does with a sequence's rows after a forward."""

    NONE = "none"  # a thought step whose output is not used (the last thought token's)
    SAMPLE_VISIBLE = "sample_visible"  # thoughts off: the base row's logits give the next token
    SAMPLE_THOUGHT = "sample_thought"  # the K thought rows give the next thought tokens
    MIX = "mix"  # END was fed: mix with h_base, sample the next visible token


class Row(NamedTuple):
    """One input row of a decode step, in the dense (slot, column) layout of the attention:
    column 0 is the base row, column 1 + k thought k."""

    slot: int
    column: int
    token: int  # a token id, or the START_THOUGHT / END_THOUGHT sentinel
    position: int  # rotary position
    cache_index: int  # prefix position written (base row) or thought step written


@dataclass(eq=False)
class Sequence:
    seq_id: str
    request_id: str
    index: int
    prompt_ids: list[int]
    params: SamplingParams
    thought_len: int  # L (resolved from the checkpoint when not given)
    seed: int  # per-sequence random stream (see sampler.uniform)
    status: SequenceStatus = SequenceStatus.WAITING
    finish_reason: FinishReason | None = None
    slot: int | None = None
    output_ids: list[int] = field(default_factory=list)
    pending_token: int | None = None  # sampled visible token not yet fed to the model
    h_base: torch.Tensor | None = None  # (d,) hidden state of the last fed visible token
    thought_step: int = -1
    thought_ids: list[list[int]] = field(default_factory=list)  # current thought, K lists
    num_thought_tokens: int = 0
    num_draws: int = 0  # sampling events so far: the counter of the random stream
    outbox: list[TokenOutput] = field(default_factory=list)
    is_reported: bool = False  # the finished output has been handed out

    @property
    def is_thinking(self) -> bool:
        return self.params.thoughts.enabled

    @property
    def num_thoughts(self) -> int:
        """K thought rows per step while thinking."""
        return self.params.thoughts.num_thoughts if self.is_thinking else 1

    @property
    def num_visible_tokens(self) -> int:
        return len(self.output_ids)

    @property
    def is_finished(self) -> bool:
        return self.status == SequenceStatus.FINISHED

    # ------------------------------------------------------------------ thought state machine

    def begin_thought(self) -> None:
        """START is fed next step, fused with the pending visible token if there is one."""
        self.thought_step = 0
        self.thought_ids = [[] for _ in range(self.num_thoughts)]

    def thought_inputs(self) -> list[int] | None:
        """Token (or meta sentinel) each of the K thought rows feeds this step, or None."""
        t, L = self.thought_step, self.thought_len
        if t < 0:
            return None
        if t == 0:
            return [START_THOUGHT] * self.num_thoughts
        if t <= L:
            return [ids[t - 1] for ids in self.thought_ids]
        return [END_THOUGHT] * self.num_thoughts

    def decode_rows(self, prefix_len: int) -> list[Row]:
        """The rows this sequence feeds in the next decode step, its prefix holding `prefix_len`
        positions. Thought rows attend the prefix including this step's base row."""
        rows = []
        if self.pending_token is not None:
            rows.append(Row(self.slot, 0, self.pending_token, prefix_len, prefix_len))
            prefix_len += 1
        t = self.thought_step
        for k, token in enumerate(self.thought_inputs() or ()):
            rows.append(Row(self.slot, 1 + k, token, prefix_len + t, t))
        return rows

    def after_prefill(self) -> Action:
        if self.is_thinking:
            self.begin_thought()
            return Action.NONE
        return Action.SAMPLE_VISIBLE

    def advance(self) -> Action:
        """The rows of `decode_rows` were fed: move the state on and say what their outputs are
        for. The base row's output (h_base) is the caller's to keep."""
        self.pending_token = None
        t, L = self.thought_step, self.thought_len
        if t < 0:
            return Action.SAMPLE_VISIBLE
        if t == L + 1:
            return Action.MIX
        self.thought_step += 1
        return Action.SAMPLE_THOUGHT if t < L else Action.NONE

    def append_thought_tokens(self, tokens: list[int]) -> None:
        for ids, token in zip(self.thought_ids, tokens, strict=True):
            ids.append(token)
        self.num_thought_tokens += len(tokens)

    def end_thought(self) -> list[list[int]]:
        """END's output was mixed: the thought is done; returns its K token lists."""
        thought, self.thought_ids, self.thought_step = self.thought_ids, [], -1
        return thought

    def append_visible(self, token: int) -> None:
        """A visible token was sampled: it is fed next step (and a new thought begins)."""
        self.output_ids.append(token)
        self.pending_token = token
        if self.is_thinking:
            self.begin_thought()

    def finish(self, reason: FinishReason) -> None:
        self.status = SequenceStatus.FINISHED
        self.finish_reason = reason
        self.pending_token = None
        self.thought_step = -1
