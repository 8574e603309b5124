"""Per-request engine input: sampling and thought parameters (plain dataclasses, validated)."""

from __future__ import annotations

from dataclasses import dataclass, field

# spelled out, not imported: the API process must not import torch (equal to
# quietstar.thought_content.THOUGHT_CONTENTS; a test keeps them so)
THOUGHT_CONTENTS = ("model", "random")


class RequestError(ValueError):
    """A request the engine cannot serve; `param` names the request field at fault
    (`prompt`, `max_tokens`, `thoughts.tokens`, `thoughts.count`)."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class ThoughtParams:
    enabled: bool = False
    num_tokens: int | None = None  # L sampled thought tokens per visible token; None: checkpoint's
    num_thoughts: int = 1  # K parallel thoughts per visible token (K > 1: mean of K distributions)
    temperature: float = 1.0  # spec §3.5: thoughts are sampled at T = 1 over the full vocab
    include: bool = False  # return thought ids and mixing weights with each token
    content: str = "model"  # "model": sampled as trained; "random": the uniform-content control

    def __post_init__(self):
        if self.num_tokens is not None and self.num_tokens < 0:
            raise ValueError(f"thought tokens must be >= 0, got {self.num_tokens}")
        if self.num_thoughts < 1:
            raise ValueError(f"num_thoughts must be >= 1, got {self.num_thoughts}")
        if self.temperature <= 0:
            raise ValueError(f"thought temperature must be > 0, got {self.temperature}")
        if self.content not in THOUGHT_CONTENTS:
            raise ValueError(
                f"thought content must be one of {THOUGHT_CONTENTS}, got {self.content!r}"
            )


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    min_p: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None  # None: no logprobs; N >= 0: chosen token + top N
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    n: int = 1  # independent choices, each its own sequence
    thoughts: ThoughtParams = field(default_factory=ThoughtParams)

    def __post_init__(self):
        checks = [
            (self.max_tokens >= 0, f"max_tokens must be >= 0, got {self.max_tokens}"),
            (self.temperature >= 0, f"temperature must be >= 0, got {self.temperature}"),
            (0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}"),
            (self.top_k >= 0, f"top_k must be >= 0, got {self.top_k}"),
            (0 <= self.min_p <= 1, f"min_p must be in [0, 1], got {self.min_p}"),
            (self.n >= 1, f"n must be >= 1, got {self.n}"),
            (self.logprobs is None or self.logprobs >= 0, "logprobs must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
