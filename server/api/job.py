"""One HTTP generation request as a `Job`: its engine requests (one per prompt), merged output
stream (leaving early aborts them), per-choice state, usage, metrics and the admission slot."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from server.api import formatting
from server.api.metrics import ServerMetrics
from server.api.middleware import Admission
from server.api.responses import Usage
from server.engine import FinishReason, RequestOutput, SamplingParams, TokenOutput

log = logging.getLogger(__name__)


class Aborted(Exception):
    """The engine ended a choice with finish_reason abort (server shutting down)."""


@dataclass
class ChoiceState:
    index: int
    prompt_index: int
    tokens: list[TokenOutput] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    num_visible_tokens: int = 0
    num_thought_tokens: int = 0
    last_token_at: float | None = None

    @property
    def text(self) -> str:
        return "".join(t.text for t in self.tokens)


@dataclass
class Job:
    """One HTTP generation request: its engine requests (one per prompt) and their choices."""

    request_id: str
    endpoint: str
    prompts: list[list[int]]
    params: SamplingParams
    engine: Any
    metrics: ServerMetrics
    admission: Admission
    started: float = field(default_factory=time.monotonic)
    choices: list[ChoiceState] = field(default_factory=list)
    num_scoring_thought_tokens: int = 0  # sampled while scoring echoed prompts
    first_token_at: float | None = None
    outcome: str | None = None

    def __post_init__(self) -> None:
        n = self.params.n
        self.choices = [ChoiceState(i, i // n) for i in range(len(self.prompts) * n)]

    def engine_ids(self) -> list[str]:
        if len(self.prompts) == 1:
            return [self.request_id]
        return [f"{self.request_id}-{i}" for i in range(len(self.prompts))]

    async def outputs(self) -> AsyncIterator[tuple[int, RequestOutput]]:
        """(prompt index, output) from all engine streams; leaving early aborts them all."""
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(i: int, engine_id: str) -> None:
            try:
                async for out in self.engine.generate(engine_id, self.prompts[i], self.params):
                    queue.put_nowait((i, out))
            except Exception as e:  # noqa: BLE001 - handed to the consumer
                queue.put_nowait((i, e))
            finally:
                queue.put_nowait((i, None))

        ids = self.engine_ids()
        tasks = [asyncio.ensure_future(pump(i, engine_id)) for i, engine_id in enumerate(ids)]
        running, complete = len(tasks), False
        try:
            while running:
                i, item = await queue.get()
                if item is None:
                    running -= 1
                elif isinstance(item, Exception):
                    raise item
                else:
                    yield i, item
            complete = True
        finally:
            if not complete:
                for engine_id in ids:  # before any await: the engine frees slots next step
                    self.engine.abort(engine_id)
                for task in tasks:
                    task.cancel()

    def record(self, prompt_index: int, out: RequestOutput) -> ChoiceState:
        choice = self.choices[prompt_index * self.params.n + out.index]
        now = time.monotonic()
        if out.tokens:
            if self.first_token_at is None:
                self.first_token_at = now
                self.metrics.ttft.observe(now - self.started)
            if choice.last_token_at is not None:
                for _ in out.tokens:
                    self.metrics.itl.observe((now - choice.last_token_at) / len(out.tokens))
            choice.last_token_at = now
            choice.tokens.extend(out.tokens)
        choice.num_visible_tokens = out.num_visible_tokens
        choice.num_thought_tokens = out.num_thought_tokens
        if out.finished:
            if out.finish_reason == FinishReason.ABORT:
                raise Aborted("the request was aborted: the server is shutting down")
            choice.finish_reason = out.finish_reason
        return choice

    @property
    def num_prompt_tokens(self) -> int:
        return sum(len(p) for p in self.prompts)

    @property
    def num_visible_tokens(self) -> int:
        return sum(c.num_visible_tokens for c in self.choices)

    @property
    def num_thought_tokens(self) -> int:
        return sum(c.num_thought_tokens for c in self.choices) + self.num_scoring_thought_tokens

    def usage(self) -> Usage:
        return formatting.usage(
            self.num_prompt_tokens, self.num_visible_tokens, self.num_thought_tokens
        )

    def finish(self, outcome: str) -> None:
        """Count, log and release the admission slot, once."""
        if self.outcome is not None:
            return
        self.outcome = outcome
        self.admission.release()
        elapsed = time.monotonic() - self.started
        m = self.metrics
        m.count_request(self.endpoint, outcome)
        m.e2e.observe(elapsed)
        m.prompt_tokens.inc(self.num_prompt_tokens)
        m.visible_tokens.inc(self.num_visible_tokens)
        m.thought_tokens.inc(self.num_thought_tokens)
        ttft = "-" if self.first_token_at is None else f"{self.first_token_at - self.started:.3f}s"
        log.info(
            "%s: %s after %.3fs (ttft %s): %d visible + %d thought tokens",
            self.request_id,
            outcome,
            elapsed,
            ttft,
            self.num_visible_tokens,
            self.num_thought_tokens,
        )
