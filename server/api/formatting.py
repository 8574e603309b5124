"""Engine outputs -> OpenAI pieces shared by chat and completions: token strings, logprobs,
thoughts, usage, and server-sent-event framing."""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from pydantic import BaseModel

from server.api.responses import (
    ChatLogprobs,
    CompletionLogprobs,
    CompletionTokensDetails,
    PromptTokensDetails,
    TokenLogprob,
    TokenThoughts,
    TopLogprob,
    Usage,
)
from server.engine import ScoreOutput, TokenOutput

DONE = "data: [DONE]\n\n"
THOUGHT_SEPARATOR = " | "  # between the parallel thoughts of one position in `reasoning`


class TokenText:
    """Decoding of single tokens and thoughts with one tokenizer (token strings are cached)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.token = lru_cache(maxsize=1 << 16)(self._token)

    def _token(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])

    def thought(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids))


def token_thoughts(tokens: Sequence[TokenOutput], text: TokenText) -> list[TokenThoughts]:
    """One entry per visible token that carries thoughts."""
    return [
        TokenThoughts(
            token=text.token(t.token_id),
            token_id=t.token_id,
            thoughts=[text.thought(ids) for ids in t.thought_ids],
            thought_ids=t.thought_ids,
            mixing_weights=t.mixing_weights or [],
        )
        for t in tokens
        if t.thought_ids is not None
    ]


def reasoning_text(entries: Sequence[TokenThoughts]) -> str:
    """The thoughts as one string: one line per visible token, parallel thoughts joined by
    THOUGHT_SEPARATOR (streamed `delta.reasoning` pieces concatenate to the same string)."""
    return "".join(THOUGHT_SEPARATOR.join(e.thoughts) + "\n" for e in entries)


def _top(pairs: Sequence[tuple[int, float]] | None, text: TokenText) -> list[TopLogprob]:
    return [
        TopLogprob(token=(s := text.token(i)), logprob=lp, bytes=list(s.encode()))
        for i, lp in pairs or ()
    ]


def chat_logprobs(tokens: Sequence[TokenOutput], text: TokenText) -> ChatLogprobs:
    content = []
    for t in tokens:
        s = text.token(t.token_id)
        content.append(
            TokenLogprob(
                token=s,
                logprob=_finite(t.logprob),
                bytes=list(s.encode()),
                top_logprobs=_top(t.top_logprobs, text),
            )
        )
    return ChatLogprobs(content=content, refusal=None)


def _top_dict(pairs: Sequence[tuple[int, float]] | None, text: TokenText) -> dict[str, float]:
    out: dict[str, float] = {}
    for i, lp in pairs or ():
        out.setdefault(text.token(i), _finite(lp))  # equal strings: keep the likelier
    return out


def completion_logprobs(
    tokens: Sequence[TokenOutput], text: TokenText, offset: int
) -> CompletionLogprobs:
    """Legacy completions logprobs of generated tokens; `offset` is where they start in text."""
    out = _empty_logprobs()
    for t in tokens:
        s = text.token(t.token_id)
        out.tokens.append(s)
        out.token_logprobs.append(_finite(t.logprob))
        out.top_logprobs.append(_top_dict(t.top_logprobs, text))
        out.text_offset.append(offset)
        offset += len(t.text)
    return out


def prompt_logprobs(score: ScoreOutput, text: TokenText) -> CompletionLogprobs:
    """Echoed prompt: lm-eval's convention, the first token has a null logprob and no tops.
    Offsets add up the token strings (special tokens count as empty)."""
    out, offset = _empty_logprobs(), 0
    for token_id, lp, tops in zip(score.token_ids, score.logprobs, score.top_logprobs, strict=True):
        s = text.token(token_id)
        out.tokens.append(s)
        out.token_logprobs.append(None if lp is None else _finite(lp))
        out.top_logprobs.append(None if lp is None else _top_dict(tops, text))
        out.text_offset.append(offset)
        offset += len(text.thought([token_id]))
    return out


def _empty_logprobs() -> CompletionLogprobs:
    # every field set explicitly: chunks are sent with exclude_unset
    return CompletionLogprobs(tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[])


def merge_logprobs(first: CompletionLogprobs, second: CompletionLogprobs) -> CompletionLogprobs:
    return CompletionLogprobs(
        tokens=first.tokens + second.tokens,
        token_logprobs=first.token_logprobs + second.token_logprobs,
        top_logprobs=first.top_logprobs + second.top_logprobs,
        text_offset=first.text_offset + second.text_offset,
    )


def usage(num_prompt: int, num_visible: int, num_thought: int) -> Usage:
    """Thought tokens count inside completion_tokens, as OpenAI counts reasoning tokens."""
    completion = num_visible + num_thought
    details = CompletionTokensDetails(
        accepted_prediction_tokens=0,
        audio_tokens=0,
        reasoning_tokens=num_thought,
        rejected_prediction_tokens=0,
    )
    return Usage(
        prompt_tokens=num_prompt,
        completion_tokens=completion,
        total_tokens=num_prompt + completion,
        completion_tokens_details=details,
        prompt_tokens_details=PromptTokensDetails(audio_tokens=0, cached_tokens=0),
    )


def _finite(logprob: float | None) -> float:
    """JSON has no -inf: a token of probability 0 (e.g. masked, then forced) reports -9999."""
    if logprob is None or logprob != logprob:
        return -9999.0
    return max(float(logprob), -9999.0)


def sse(chunk: BaseModel) -> str:
    """One server-sent event; only the fields set on the chunk (and its `object`) are sent, so
    deltas carry just what changed, as OpenAI's do."""
    chunk.model_fields_set.add("object")
    return f"data: {chunk.model_dump_json(exclude_unset=True)}\n\n"


def sse_error(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body)}\n\n"
