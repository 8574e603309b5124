"""Response models: chat and completions (full and streamed), usage, logprobs, models, errors.

OpenAI schema names (openapi.yaml): CreateChatCompletionResponse,
CreateChatCompletionStreamResponse, CreateCompletionResponse, CompletionUsage, ListModelsResponse,
ErrorResponse. Quiet-STaR additions are marked "not in OpenAI spec".
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

FinishReason = Literal["stop", "length"]


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo


class CompletionTokensDetails(BaseModel):
    accepted_prediction_tokens: int = 0
    audio_tokens: int = 0
    reasoning_tokens: int = Field(0, description="thought tokens sampled (markers excluded)")
    rejected_prediction_tokens: int = 0


class PromptTokensDetails(BaseModel):
    audio_tokens: int = 0
    cached_tokens: int = 0


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int = Field(
        description="visible + thought tokens (OpenAI counts "
        "reasoning tokens inside completion tokens)"
    )
    total_tokens: int
    completion_tokens_details: CompletionTokensDetails
    prompt_tokens_details: PromptTokensDetails = Field(default_factory=PromptTokensDetails)


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob] | None = None
    refusal: list[TokenLogprob] | None = None


class CompletionLogprobs(BaseModel):
    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class TokenThoughts(BaseModel):
    """The thoughts sampled before one visible token (not in OpenAI spec)."""

    token: str
    token_id: int
    thoughts: list[str] = Field(description="text of each parallel thought")
    thought_ids: list[list[int]]
    mixing_weights: list[float] = Field(
        description="mixing-head weight of each thought's prediction against the base prediction"
    )


class ChatMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    refusal: str | None = None
    reasoning: str | None = None  # not in OpenAI spec: the thoughts, one line per visible token


class ChatChoice(BaseModel):
    index: int
    message: ChatMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: FinishReason
    thoughts: list[TokenThoughts] | None = None  # not in OpenAI spec


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning: str | None = None  # not in OpenAI spec: the thought before this token


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None = None
    finish_reason: FinishReason | None = None
    thoughts: list[TokenThoughts] | None = None  # not in OpenAI spec


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: FinishReason | None = None
    reasoning: str | None = None  # not in OpenAI spec
    thoughts: list[TokenThoughts] | None = None  # not in OpenAI spec


class Completion(BaseModel):
    """Also the streamed chunk (OpenAI streams `text_completion` objects too)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[CompletionChoice]
    usage: Usage | None = None


class QuietStarInfo(BaseModel):
    """The served checkpoint's thought settings (not in OpenAI spec)."""

    thought_tokens: int = Field(description="trained thought length (sampled tokens)")
    n_ahead: int
    heads_trained: bool
    trained_thought_tokens: list[int] = Field(
        default_factory=list,
        description="thought lengths the heads were trained at; other lengths are off-distribution",
    )
    thoughts_default: bool = Field(description="thoughts on for requests that do not say")
    max_thought_tokens: int
    max_num_thoughts: int = Field(
        description="the largest `thoughts.count` a request may ask for (the server's "
        "--max-num-thoughts)"
    )
    reasoning_effort_tokens: dict[str, int]
    source: str
    dtype: str
    dtype_reason: str = Field(description="why this dtype (`--dtype auto` probes the device)")
    device: str


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "quietstar"
    max_model_len: int  # not in OpenAI spec (vLLM has it)
    quietstar: QuietStarInfo  # not in OpenAI spec


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]
