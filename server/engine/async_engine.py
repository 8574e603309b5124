"""AsyncEngine: the Engine on a background thread of the API process, with per-request asyncio
queues (`quietstar serve --engine-core thread`; the default runs it in its own process,
`core_client.py`, with the same surface).

Commands (add, abort, score) are queued to the thread and applied between steps, so abort frees
a request's resources by the next step. Closing a `generate` iterator aborts its request. Text
and stop strings are applied on the event loop's side (`output_processor.py`).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sys
import threading
from collections.abc import AsyncIterator

from .config import EngineConfig
from .engine import Engine
from .limits import ModelInfo
from .output_processor import RequestText
from .outputs import FinishReason, RequestOutput, ScoreOutput
from .sampling_params import SamplingParams, ThoughtParams

log = logging.getLogger(__name__)
SWITCH_INTERVAL_S = 0.0002


class AsyncEngine:
    def __init__(self, config: EngineConfig, engine: Engine | None = None):
        self.engine = engine or Engine(config)
        self.tokenizer = self.engine.tokenizer
        self._commands: queue.Queue = queue.Queue()
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()

    @property
    def model_info(self) -> ModelInfo:
        return ModelInfo.of(self.engine)

    @property
    def num_running(self) -> int:
        return self.engine.num_running

    @property
    def num_waiting(self) -> int:
        return self.engine.num_waiting + sum(1 for c in list(self._commands.queue) if c[0] == "add")

    def validate(self, prompt_ids: list[int], params: SamplingParams) -> None:
        self.engine.validate(prompt_ids, params)

    def start(self) -> None:
        # The engine thread and the HTTP event loop share the GIL. With Python's default 5 ms
        # switch interval, one waits whole milliseconds for the other on every token.
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_S))
        _leave_a_core_for_http(self.engine.config)
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="quietstar-engine", daemon=True)
            self._thread.start()

    def shutdown(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    async def generate(
        self, request_id: str, prompt_ids: list[int], params: SamplingParams
    ) -> AsyncIterator[RequestOutput]:
        self.validate(prompt_ids, params)
        stream: asyncio.Queue = asyncio.Queue()
        self._streams[request_id] = (asyncio.get_running_loop(), stream)
        self._submit(("add", request_id, prompt_ids, params))
        text = RequestText(self.tokenizer, params)
        try:
            async for out in text.follow(stream):
                yield out
        finally:
            self._streams.pop(request_id, None)
            if text.needs_abort:
                self.abort(request_id)

    def abort(self, request_id: str) -> None:
        self._submit(("abort", request_id))

    async def score(
        self,
        prompt_ids: list[int],
        thoughts: ThoughtParams,
        top_logprobs: int = 0,
        seed: int | None = None,
    ) -> ScoreOutput:
        future = asyncio.get_running_loop().create_future()
        self._submit(
            (
                "score",
                future,
                asyncio.get_running_loop(),
                (prompt_ids, thoughts, top_logprobs, seed),
            )
        )
        return await future

    def _submit(self, command) -> None:
        self._commands.put(command)
        self._wake.set()

    # ------------------------------------------------------------------ engine thread

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._apply_commands()
            if self.engine.has_unfinished():
                try:
                    outputs = self.engine.step()
                except Exception as e:  # noqa: BLE001 - fail the running requests, keep serving
                    log.exception("engine step failed")
                    self._fail_all(e)
                    continue
                for out in outputs:
                    self._deliver(out.request_id, out)
            else:
                self._wake.wait(0.05)
                self._wake.clear()
        self._abort_all()

    def _apply_commands(self) -> None:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            kind = command[0]
            if kind == "add":
                _, request_id, prompt_ids, params = command
                try:
                    self.engine.add_request(request_id, prompt_ids, params)
                except Exception as e:  # noqa: BLE001
                    self._deliver(request_id, e)
            elif kind == "abort":
                self.engine.abort(command[1])
            elif kind == "score":
                _, future, loop, args = command
                try:
                    result = self.engine.score(*args)
                    loop.call_soon_threadsafe(_resolve, future, result, None)
                except Exception as e:  # noqa: BLE001
                    loop.call_soon_threadsafe(_resolve, future, None, e)

    def _deliver(self, request_id: str, item) -> None:
        target = self._streams.get(request_id)
        if target is not None:
            loop, stream = target
            loop.call_soon_threadsafe(stream.put_nowait, item)

    def _fail_all(self, error: Exception) -> None:
        for request_id in list(self.engine.requests):
            self.engine.abort(request_id)
            self._deliver(request_id, RuntimeError(f"engine error: {error}"))
        self.engine.step()

    def _abort_all(self) -> None:
        self._apply_commands()
        for request_id in list(self.engine.requests):
            self.engine.abort(request_id)
        for out in self.engine.step() if self.engine.has_unfinished() else []:
            if out.finish_reason is None:
                out.finish_reason = FinishReason.ABORT
            self._deliver(out.request_id, out)


def _leave_a_core_for_http(config: EngineConfig) -> None:
    """On CPU with no explicit thread count, torch's intra-op threads would take every core and
    fight the HTTP event loop for one (measured here: 44.9 tok/s with 2 threads on 2 cores,
    55.2 with 1). Leave one core to the event loop."""
    import os

    import torch

    cores = os.cpu_count() or 1
    if config.num_threads is None and config.device == "cpu" and cores > 1:
        torch.set_num_threads(min(torch.get_num_threads(), cores - 1))


def _resolve(future: asyncio.Future, result, error) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
