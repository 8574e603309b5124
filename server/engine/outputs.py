"""What the engine emits: per visible token, per request step, and per scoring call."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class FinishReason(str, Enum):
    STOP = "stop"
    LENGTH = "length"
    ABORT = "abort"


@dataclass
class TokenOutput:
    token_id: int
    text: str  # text this token adds: "" from the engine, filled by output_processor.py
    logprob: float | None = (
        None  # under the distribution it was sampled from (before sampling transforms)
    )
    top_logprobs: list[tuple[int, float]] | None = None
    thought_ids: list[list[int]] | None = None  # K lists of L ids (when thoughts are included)
    mixing_weights: list[float] | None = None  # w per parallel thought


@dataclass
class RequestOutput:
    request_id: str
    index: int  # choice index (0..n-1)
    tokens: list[TokenOutput] = field(default_factory=list)  # new since the last output
    finished: bool = False
    finish_reason: FinishReason | None = None
    num_prompt_tokens: int = 0
    num_visible_tokens: int = 0
    num_thought_tokens: int = 0  # thought tokens sampled (markers excluded), all K thoughts


@dataclass
class ScoreOutput:
    token_ids: list[int]
    logprobs: list[float | None]  # first position None (nothing predicts it)
    top_logprobs: list[list[tuple[int, float]] | None]
    num_thought_tokens: int = 0
