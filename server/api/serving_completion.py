"""/v1/completions: string / token-id / batched prompts (choices of prompt i are indexed
i*n .. i*n+n-1), echo, and scoring: `echo` + `logprobs` return the prompt tokens' thought-aided
log-probs (lm-evaluation-harness convention: the first token's is null)."""

from __future__ import annotations

import asyncio
import time

from fastapi import Request
from fastapi.responses import Response

from server.api import formatting
from server.api.job import ChoiceState, Job
from server.api.protocol import CompletionRequest
from server.api.responses import Completion, CompletionChoice, CompletionLogprobs
from server.api.serving import Serving
from server.engine import RequestOutput

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for completions


def completion_prompts(text: formatting.TokenText, prompt: object) -> list[list[int]]:
    if isinstance(prompt, str):
        return [text.encode(prompt, add_special_tokens=True)]
    assert isinstance(prompt, list)  # the protocol model admits nothing else
    if isinstance(prompt[0], int):
        return [list(prompt)]
    if isinstance(prompt[0], str):
        return [text.encode(p, add_special_tokens=True) for p in prompt]
    return [list(p) for p in prompt]


async def create_completion(
    serving: Serving, body: CompletionRequest, request: Request
) -> Response:
    serving.check_model(body.model)
    prompts = completion_prompts(serving.text, body.prompt)
    job = serving.prepare(body, "cmpl", prompts, DEFAULT_MAX_TOKENS)
    request.state.job = job  # counted in the metrics by the job itself
    builder = CompletionBuilder(serving, job, body)
    if body.stream:
        return serving.stream(job, builder)
    return await serving.respond(job, builder, request)


class CompletionBuilder:
    def __init__(self, serving: Serving, job: Job, body: CompletionRequest) -> None:
        self.serving, self.job, self.text = serving, job, serving.text
        self.include_usage = bool(body.stream_options and body.stream_options.include_usage)
        self.created = int(time.time())
        self.echo, self.scoring = bool(body.echo), body.is_scoring
        self.echo_texts = [""] * len(job.prompts)
        if self.echo:  # string prompts echo as sent, token prompts decoded
            raw = body.prompt
            strings = [raw] if isinstance(raw, str) else raw if isinstance(raw[0], str) else None
            self.echo_texts = strings or [serving.text.decode(ids) for ids in job.prompts]
        self.prompt_logprobs: list[CompletionLogprobs | None] = [None] * len(job.prompts)
        self.offsets = [len(self.echo_texts[c.prompt_index]) for c in job.choices]

    async def prepare(self) -> None:
        """Score the echoed prompts (thoughts as the request asks)."""
        if not self.scoring:
            return
        p = self.job.params
        scores = await asyncio.gather(
            *(
                self.serving.engine.score(ids, p.thoughts, p.logprobs or 0, p.seed)
                for ids in self.job.prompts
            )
        )
        for i, score in enumerate(scores):
            self.prompt_logprobs[i] = formatting.prompt_logprobs(score, self.text)
            self.job.num_scoring_thought_tokens += score.num_thought_tokens

    def _chunk(self, choice: CompletionChoice) -> Completion:
        chunk = Completion(
            id=self.job.request_id,
            created=self.created,
            model=self.serving.defaults.model_name,
            system_fingerprint=self.serving.fingerprint,
            choices=[choice],
        )
        if self.include_usage:
            chunk.usage = None  # marked as set: the spec sends `usage: null` on these chunks
        return chunk

    def start(self) -> list[Completion]:
        if not self.echo:
            return []
        return [
            self._chunk(
                CompletionChoice(
                    index=c.index,
                    text=self.echo_texts[c.prompt_index],
                    logprobs=self.prompt_logprobs[c.prompt_index],
                    finish_reason=None,
                )
            )
            for c in self.job.choices
        ]

    def on_output(self, choice: ChoiceState, out: RequestOutput) -> list[Completion]:
        chunks = []
        for token in out.tokens:
            part = CompletionChoice(
                index=choice.index, text=token.text, logprobs=None, finish_reason=None
            )
            if self.job.params.logprobs is not None:
                part.logprobs = formatting.completion_logprobs(
                    [token], self.text, self.offsets[choice.index]
                )
            self.offsets[choice.index] += len(token.text)
            thoughts = formatting.token_thoughts([token], self.text)
            if thoughts:
                part.reasoning, part.thoughts = formatting.reasoning_text(thoughts), thoughts
            chunks.append(self._chunk(part))
        if choice.finish_reason is not None:
            chunks.append(
                self._chunk(
                    CompletionChoice(
                        index=choice.index,
                        text="",
                        logprobs=None,
                        finish_reason=choice.finish_reason.value,
                    )
                )
            )
        return chunks

    def end(self) -> list[Completion]:
        if not self.include_usage:
            return []
        return [
            Completion(
                id=self.job.request_id,
                created=self.created,
                model=self.serving.defaults.model_name,
                system_fingerprint=self.serving.fingerprint,
                choices=[],
                usage=self.job.usage(),
            )
        ]

    def response(self) -> Completion:
        return Completion(
            id=self.job.request_id,
            created=self.created,
            model=self.serving.defaults.model_name,
            system_fingerprint=self.serving.fingerprint,
            choices=[self._choice(c) for c in self.job.choices],
            usage=self.job.usage(),
        )

    def _choice(self, c: ChoiceState) -> CompletionChoice:
        echo = self.echo_texts[c.prompt_index]
        logprobs = None
        if self.job.params.logprobs is not None:
            logprobs = formatting.completion_logprobs(c.tokens, self.text, len(echo))
            prompt = self.prompt_logprobs[c.prompt_index]
            if prompt is not None:
                logprobs = formatting.merge_logprobs(prompt, logprobs)
        thoughts = formatting.token_thoughts(c.tokens, self.text)
        return CompletionChoice(
            index=c.index,
            text=echo + c.text,
            logprobs=logprobs,
            finish_reason=c.finish_reason.value,
            reasoning=formatting.reasoning_text(thoughts) or None,
            thoughts=thoughts or None,
        )
