"""/v1/chat/completions: prompt rendering with the tokenizer's chat template, and the response
and stream-chunk shapes (`message.reasoning` / `delta.reasoning` carry the thoughts)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from server.api import formatting
from server.api.errors import bad_request
from server.api.job import ChoiceState, Job
from server.api.protocol import ChatCompletionRequest, ChatMessage
from server.api.responses import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatDelta,
)
from server.api.responses import ChatMessage as ResponseMessage
from server.api.serving import Serving
from server.engine import RequestOutput

# Used only when the checkpoint's tokenizer has no chat template (e.g. a base model).
FALLBACK_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def render_chat(tokenizer: Any, messages: list[ChatMessage]) -> list[int]:
    """Prompt ids of the conversation plus the assistant generation prompt."""
    conversation = [
        {"role": "system" if m.role == "developer" else m.role, "content": m.text} for m in messages
    ]
    template = None if getattr(tokenizer, "chat_template", None) else FALLBACK_CHAT_TEMPLATE
    try:
        text = tokenizer.apply_chat_template(
            conversation, chat_template=template, tokenize=False, add_generation_prompt=True
        )
    except Exception as e:  # noqa: BLE001 - jinja raise_exception(), e.g. roles must alternate
        raise bad_request(f"cannot apply the chat template: {e}", "messages") from e
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


async def create_chat_completion(
    serving: Serving, body: ChatCompletionRequest, request: Request
) -> Response:
    serving.check_model(body.model)
    prompt = render_chat(serving.engine.tokenizer, body.messages)
    job = serving.prepare(body, "chatcmpl", [prompt], serving.defaults.max_model_len)
    request.state.job = job  # counted in the metrics by the job itself
    builder = ChatBuilder(serving, job, body)
    if body.stream:
        return serving.stream(job, builder)
    return await serving.respond(job, builder, request)


class ChatBuilder:
    def __init__(self, serving: Serving, job: Job, body: ChatCompletionRequest) -> None:
        self.serving, self.job, self.text = serving, job, serving.text
        self.include_usage = bool(body.stream_options and body.stream_options.include_usage)
        self.created = int(time.time())

    async def prepare(self) -> None:
        pass

    def _chunk(self, choices: list[ChatChunkChoice]) -> ChatCompletionChunk:
        chunk = ChatCompletionChunk(
            id=self.job.request_id,
            created=self.created,
            model=self.serving.defaults.model_name,
            system_fingerprint=self.serving.fingerprint,
            choices=choices,
        )
        if self.include_usage:
            chunk.usage = None  # marked as set: the spec sends `usage: null` on these chunks
        return chunk

    def start(self) -> list[ChatCompletionChunk]:
        return [
            self._chunk(
                [
                    ChatChunkChoice(
                        index=c.index,
                        logprobs=None,
                        finish_reason=None,
                        delta=ChatDelta(role="assistant", content=""),
                    )
                ]
            )
            for c in self.job.choices
        ]

    def on_output(self, choice: ChoiceState, out: RequestOutput) -> list[ChatCompletionChunk]:
        """One chunk per visible token (its thought in delta.reasoning), then the finish."""
        chunks = []
        for token in out.tokens:
            delta = ChatDelta(content=token.text)
            part = ChatChunkChoice(
                index=choice.index, delta=delta, logprobs=None, finish_reason=None
            )
            if self.job.params.logprobs is not None:
                part.logprobs = formatting.chat_logprobs([token], self.text)
            thoughts = formatting.token_thoughts([token], self.text)
            if thoughts:
                delta.reasoning = formatting.reasoning_text(thoughts)
                part.thoughts = thoughts
            chunks.append(self._chunk([part]))
        if choice.finish_reason is not None:
            chunks.append(
                self._chunk(
                    [
                        ChatChunkChoice(
                            index=choice.index,
                            delta=ChatDelta(),
                            logprobs=None,
                            finish_reason=choice.finish_reason.value,
                        )
                    ]
                )
            )
        return chunks

    def end(self) -> list[ChatCompletionChunk]:
        if not self.include_usage:
            return []
        return [
            ChatCompletionChunk(
                id=self.job.request_id,
                created=self.created,
                model=self.serving.defaults.model_name,
                system_fingerprint=self.serving.fingerprint,
                choices=[],
                usage=self.job.usage(),
            )
        ]

    def response(self) -> ChatCompletion:
        choices = []
        for c in self.job.choices:
            thoughts = formatting.token_thoughts(c.tokens, self.text)
            message = ResponseMessage(
                content=c.text, reasoning=formatting.reasoning_text(thoughts) or None
            )
            logprobs = None
            if self.job.params.logprobs is not None:
                logprobs = formatting.chat_logprobs(c.tokens, self.text)
            choices.append(
                ChatChoice(
                    index=c.index,
                    message=message,
                    logprobs=logprobs,
                    finish_reason=c.finish_reason.value,
                    thoughts=thoughts or None,
                )
            )
        return ChatCompletion(
            id=self.job.request_id,
            created=self.created,
            model=self.serving.defaults.model_name,
            choices=choices,
            usage=self.job.usage(),
            system_fingerprint=self.serving.fingerprint,
        )
