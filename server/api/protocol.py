"""Request models of /v1/chat/completions and /v1/completions, fields in OpenAI doc order.

Spec: https://github.com/openai/openai-openapi (openapi.yaml: CreateChatCompletionRequest,
CreateCompletionRequest). Quiet-STaR and vLLM-style extensions are fenced at the end of each
model. Fields that would change the output but are not implemented are rejected (400 naming the
field), never ignored; unknown extra fields are logged and ignored (see `ignored_fields`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from server.api.protocol_base import (
    INT64,
    EngineRequest,
    OpenAIModel,
    ThoughtOptions,
    reject_unless,
    unsupported,
)

Effort = Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"]


class ContentPart(OpenAIModel):
    type: str
    text: str | None = None

    @model_validator(mode="after")
    def _text_only(self) -> ContentPart:
        if self.type != "text":
            raise PydanticCustomError(
                "unsupported",
                "content part type {kind!r} is not supported; only 'text'",
                {"kind": self.type},
            )
        if self.text is None:
            raise PydanticCustomError("unsupported", "a text content part needs `text`")
        return self


class ChatMessage(OpenAIModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    # Accepted on input and dropped: thoughts are not part of the prompt.
    reasoning: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[Any] | None = None

    @field_validator("tool_calls")
    @classmethod
    def _no_tool_calls(cls, value: list[Any] | None) -> list[Any] | None:
        return reject_unless(value, (None, []), "tool_calls")

    @model_validator(mode="after")
    def _content_required(self) -> ChatMessage:
        if self.content is None and self.role != "assistant":
            raise PydanticCustomError(
                "unsupported", "a {role} message needs `content`", {"role": self.role}
            )
        return self

    @property
    def text(self) -> str:
        if isinstance(self.content, list):
            return "\n".join(part.text or "" for part in self.content)
        return self.content or ""


class StreamOptions(OpenAIModel):
    include_usage: bool | None = None


Temperature = Field(None, ge=0, le=2)
TopP = Field(None, gt=0, le=1)
Penalty = Field(None, ge=-2, le=2)
Seed = Field(None, ge=-INT64, lt=INT64)


class ChatCompletionRequest(EngineRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    model: str
    metadata: dict[str, str] | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    temperature: float | None = Temperature
    top_p: float | None = TopP
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    service_tier: str | None = None
    modalities: list[str] | None = None
    verbosity: str | None = None
    reasoning_effort: Effort | None = None
    max_completion_tokens: int | None = Field(None, ge=1)
    frequency_penalty: float | None = Penalty
    presence_penalty: float | None = Penalty
    web_search_options: dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    audio: dict[str, Any] | None = None
    store: bool | None = None
    stream: bool | None = False
    stop: str | list[str] | None = None
    logit_bias: dict[str, Any] | None = None
    logprobs: bool | None = False
    max_tokens: int | None = Field(None, ge=1)
    n: int | None = Field(1, ge=1, le=128)
    prediction: dict[str, Any] | None = None
    seed: int | None = Seed
    stream_options: StreamOptions | None = None
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    function_call: str | dict[str, Any] | None = None
    functions: list[Any] | None = None
    # ---- extensions (not in OpenAI spec): vLLM-style sampling knobs and Quiet-STaR thoughts
    top_k: int | None = Field(
        None, ge=-1, description="sample from the k most likely tokens (0 or -1: off)"
    )
    min_p: float | None = Field(
        None, ge=0, le=1, description="drop tokens below min_p x the top probability"
    )
    ignore_eos: bool | None = Field(None, description="keep generating past end-of-sequence")
    stop_token_ids: list[int] | None = Field(None, description="token ids that end a choice")
    thoughts: ThoughtOptions | bool | None = Field(
        None,
        description="Quiet-STaR thought controls (true/false: just `enabled`); they win "
        "over reasoning_effort / include_reasoning",
    )
    include_reasoning: bool | None = Field(
        None, description="alias of thoughts.include (default false)"
    )

    @field_validator("modalities")
    @classmethod
    def _text_only(cls, value: list[str] | None) -> list[str] | None:
        return reject_unless(value, (None, ["text"]), "modalities")

    @field_validator("verbosity", "web_search_options", "audio", "prediction")
    @classmethod
    def _unset_only(cls, value: Any, info: Any) -> Any:
        return reject_unless(value, (None,), info.field_name)

    @field_validator("response_format")
    @classmethod
    def _text_format(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return reject_unless(value, (None, {"type": "text"}), "response_format")

    @field_validator("tools", "functions")
    @classmethod
    def _no_tools(cls, value: list[Any] | None, info: Any) -> list[Any] | None:
        return reject_unless(value, (None, []), info.field_name)

    @field_validator("tool_choice", "function_call")
    @classmethod
    def _no_tool_choice(cls, value: Any, info: Any) -> Any:
        return reject_unless(value, (None, "none", "auto"), info.field_name)

    @model_validator(mode="after")
    def _logprobs_consistent(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise unsupported("top_logprobs", "needs `logprobs: true`")
        if self.stream_options is not None and not self.stream:
            raise unsupported("stream_options", "is only allowed with `stream: true`")
        return self

    @property
    def num_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(EngineRequest):
    model: str
    prompt: str | list[str] | list[int] | list[list[int]]
    best_of: int | None = Field(None, ge=1, le=128)
    echo: bool | None = False
    frequency_penalty: float | None = Penalty
    logit_bias: dict[str, Any] | None = None
    logprobs: int | None = Field(None, ge=0, le=20)
    max_tokens: int | None = Field(None, ge=0)
    n: int | None = Field(1, ge=1, le=128)
    presence_penalty: float | None = Penalty
    seed: int | None = Seed
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    suffix: str | None = None
    temperature: float | None = Temperature
    top_p: float | None = TopP
    user: str | None = None
    # ---- extensions (not in OpenAI spec): vLLM-style sampling knobs and Quiet-STaR thoughts
    top_k: int | None = Field(
        None, ge=-1, description="sample from the k most likely tokens (0 or -1: off)"
    )
    min_p: float | None = Field(
        None, ge=0, le=1, description="drop tokens below min_p x the top probability"
    )
    ignore_eos: bool | None = Field(None, description="keep generating past end-of-sequence")
    stop_token_ids: list[int] | None = Field(None, description="token ids that end a choice")
    reasoning_effort: Effort | None = Field(
        None, description="thought length preset (`none`: thoughts off), as on chat"
    )
    thoughts: ThoughtOptions | bool | None = Field(
        None,
        description="Quiet-STaR thought controls (true/false: just `enabled`); they win "
        "over reasoning_effort / include_reasoning",
    )
    include_reasoning: bool | None = Field(
        None, description="alias of thoughts.include (default false)"
    )

    @field_validator("prompt")
    @classmethod
    def _non_empty(cls, value: Any) -> Any:
        if isinstance(value, list) and (not value or any(v == [] for v in value)):
            raise unsupported("prompt", "must not be an empty list")
        return value

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, value: str | None) -> str | None:
        return reject_unless(value, (None, ""), "suffix")

    @model_validator(mode="after")
    def _consistent(self) -> CompletionRequest:
        if self.best_of is not None and self.best_of != (self.n or 1):
            raise unsupported("best_of", "is not supported (only best_of == n)")
        if self.stream_options is not None and not self.stream:
            raise unsupported("stream_options", "is only allowed with `stream: true`")
        return self

    @property
    def num_logprobs(self) -> int | None:
        return self.logprobs

    @property
    def is_scoring(self) -> bool:
        """lm-eval log-likelihood: echo the prompt with its (thought-aided) log-probs."""
        return bool(self.echo) and self.logprobs is not None
