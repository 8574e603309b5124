"""What the API process needs to know about a loaded engine without holding it: the request
limits (validation, with the messages and `param` names the HTTP errors carry) and the model
info the server advertises (`ModelInfo`). Both are frozen dataclasses, so they cross the
engine-core boundary as typed msgspec fields."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .sampling_params import RequestError, SamplingParams, ThoughtParams

if TYPE_CHECKING:
    from .engine import Engine


@dataclass(frozen=True)
class RequestLimits:
    max_model_len: int
    vocab_size: int
    default_thought_tokens: int  # the checkpoint's L, for requests that give none
    max_thought_tokens: int
    max_num_thoughts: int

    @classmethod
    def of(cls, engine: Engine) -> RequestLimits:
        return cls(
            engine.max_model_len,
            engine.model.vocab_size,
            engine.default_thought_tokens,
            engine.config.max_thought_tokens,
            engine.config.max_num_thoughts,
        )

    def thought_len(self, thoughts: ThoughtParams) -> int:
        """L for this request."""
        return self.default_thought_tokens if thoughts.num_tokens is None else thoughts.num_tokens

    def validate(self, prompt_ids: list[int], params: SamplingParams) -> None:
        """Raise RequestError naming the field when a request cannot be served."""
        self.validate_prompt(prompt_ids)
        self.validate_thoughts(params.thoughts)
        if len(prompt_ids) + params.max_tokens > self.max_model_len:
            raise RequestError(
                f"this model's maximum context length is {self.max_model_len} tokens; the request "
                f"has {len(prompt_ids)} prompt tokens and asks for {params.max_tokens} completion tokens",
                "max_tokens",
            )

    def validate_prompt(self, prompt_ids: list[int]) -> None:
        if not prompt_ids:
            raise RequestError("the prompt is empty", "prompt")
        if min(prompt_ids) < 0 or max(prompt_ids) >= self.vocab_size:
            raise RequestError(f"prompt token ids must be in [0, {self.vocab_size})", "prompt")
        if len(prompt_ids) > self.max_model_len:
            raise RequestError(
                f"this model's maximum context length is {self.max_model_len} tokens; "
                f"the prompt has {len(prompt_ids)}",
                "prompt",
            )

    def validate_thoughts(self, th: ThoughtParams) -> None:
        if not th.enabled:
            return
        L = self.thought_len(th)
        if L > self.max_thought_tokens:
            raise RequestError(
                f"thought tokens {L} exceed this server's maximum of {self.max_thought_tokens}",
                "thoughts.tokens",
            )
        if th.num_thoughts > self.max_num_thoughts:
            raise RequestError(
                f"thoughts.count {th.num_thoughts} exceeds this server's maximum of "
                f"{self.max_num_thoughts} (--max-num-thoughts)",
                "thoughts.count",
            )


@dataclass(frozen=True)
class ModelInfo:
    """The loaded model as `/v1/models` and the request defaults describe it."""

    max_model_len: int
    thought_tokens: int  # the checkpoint's L (sampled thought tokens per position)
    n_ahead: int  # thought_tokens + the START and END markers (the spec's n_ahead)
    heads_trained: bool
    trained_thought_tokens: tuple[int, ...]  # L values the heads were trained at
    source: str  # where the weights came from
    dtype: str  # "float32", "bfloat16", ...
    dtype_reason: str  # why this dtype (`--dtype auto` probes the device)
    device: str

    @classmethod
    def of(cls, engine: Engine) -> ModelInfo:
        config = engine.model.config
        return cls(
            max_model_len=engine.max_model_len,
            thought_tokens=engine.default_thought_tokens,
            n_ahead=config.n_ahead,
            heads_trained=bool(config.heads_trained),
            trained_thought_tokens=tuple(config.trained_thought_tokens),
            source=str(getattr(engine.model, "source", engine.config.model)),
            dtype=str(engine.model.dtype).removeprefix("torch."),
            dtype_reason=engine.dtype_reason,
            device=str(engine.config.device),
        )
