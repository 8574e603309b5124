"""EngineCoreClient: the API process's handle on the engine-core process (`core.py`), with the
AsyncEngine surface (generate, abort, score, validate, start, shutdown), as vLLM V1 splits them.

The API process keeps HTTP, tokenisation, chat templates, validation (`limits.py`, the same
messages as the engine's) and the output processor (text and stop strings); the core process
only schedules, runs the model and samples. Libraries, and why:
- pyzmq: ZeroMQ PUSH/PULL sockets over `ipc://`: message framing, queueing while the peer is
  busy, and an asyncio socket for the event loop, with no broker and no threads of ours;
- msgspec: typed MessagePack structs (`core_messages.py`), far faster than pickle or JSON.

A core that dies (exit or kill -9) is noticed within WATCH_INTERVAL_S: in-flight requests fail
with EngineDeadError, new ones are refused, and `on_dead` tells the server, which stops.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable

import zmq
import zmq.asyncio

from . import core_messages as msg
from .config import EngineConfig
from .output_processor import RequestText
from .outputs import FinishReason, RequestOutput, ScoreOutput
from .sampling_params import RequestError, SamplingParams, ThoughtParams

log = logging.getLogger(__name__)
WATCH_INTERVAL_S = 0.2
DRAIN_GRACE_S = 0.1  # after the core exits, time for the last outputs to be dispatched


class EngineDeadError(RuntimeError):
    """The engine-core process exited while the server still needed it."""


class EngineCoreClient:
    def __init__(self, config: EngineConfig, start_timeout: float = 3600.0):
        self.config = config
        self._is_closed = threading.Event()
        self._dir = tempfile.mkdtemp(prefix="quietstar-core-")
        self._context = zmq.Context(io_threads=1)
        self._commands = self._bind(zmq.PUSH, "commands")
        self._commands.setsockopt(zmq.SNDHWM, 0)  # never drop or block on a busy core
        self._results = self._bind(zmq.PULL, "results")
        self.process = subprocess.Popen(
            [
                *(sys.executable, "-m", "server.engine.core", "--parent-pid", str(os.getpid())),
                *("--config", json.dumps(dataclasses.asdict(config))),
                *("--input", self._commands.LAST_ENDPOINT.decode()),
                *("--output", self._results.LAST_ENDPOINT.decode()),
                *("--log-level", logging.getLevelName(logging.getLogger().getEffectiveLevel())),
            ],
            stdin=subprocess.DEVNULL,
        )
        try:
            ready = self._wait_ready(start_timeout)
        except BaseException:
            self._stop_process(5.0)
            self._close()
            raise
        self.model_info, self.limits = ready.model_info, ready.limits
        self.tokenizer = pickle.loads(ready.tokenizer)
        self.num_running = self.num_waiting = 0
        self.dead: EngineDeadError | None = None
        self.on_dead: Callable[[EngineDeadError], None] | None = None
        self._streams: dict[str, tuple[asyncio.Queue, int]] = {}
        self._scores: dict[int, asyncio.Future] = {}
        self._call_ids = itertools.count()
        self._send_lock = threading.Lock()  # shutdown() may run on a worker thread
        self._is_stopping = False
        self._tasks: list[asyncio.Task] = []

    def _bind(self, kind: int, name: str) -> zmq.Socket:
        socket = self._context.socket(kind)
        socket.bind(f"ipc://{self._dir}/{name}")
        return socket

    def _wait_ready(self, timeout: float) -> msg.Ready:
        deadline = time.monotonic() + timeout
        while not self._results.poll(100):
            code = self.process.poll()
            if code is not None:
                raise RuntimeError(f"the engine core exited with code {code} while starting")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the engine core was not ready after {timeout:.0f} s")
        reply = msg.from_core.decode(self._results.recv())
        if isinstance(reply, msg.StartFailed):
            raise RuntimeError(f"the engine core failed to start: {reply.error}")
        assert isinstance(reply, msg.Ready), reply
        return reply

    # ------------------------------------------------------------------ the AsyncEngine surface

    def validate(self, prompt_ids: list[int], params: SamplingParams) -> None:
        self.limits.validate(prompt_ids, params)

    def start(self) -> None:
        """Start dispatching the core's messages on the running event loop."""
        if self._tasks:
            return
        results = zmq.asyncio.Socket.from_socket(self._results)
        self._tasks = [
            asyncio.ensure_future(self._pump(results)),
            asyncio.ensure_future(self._watch()),
        ]

    def shutdown(self, timeout: float = 10.0) -> None:
        """Abort what runs (those requests end as aborted) and stop the core; idempotent."""
        if not self._is_stopping and self.process.poll() is None:
            self._is_stopping = True
            self._send(msg.Shutdown())
        self._is_stopping = True
        self._stop_process(timeout)
        # the watcher ends the open streams and closes the sockets on the event loop; without a
        # running loop (never started, or already stopped) nothing else uses them: close here
        if not self._is_closed.wait(WATCH_INTERVAL_S + DRAIN_GRACE_S + 1.0 if self._tasks else 0):
            self._close()

    async def generate(
        self, request_id: str, prompt_ids: list[int], params: SamplingParams
    ) -> AsyncIterator[RequestOutput]:
        self._check_alive()
        self.validate(prompt_ids, params)
        stream: asyncio.Queue = asyncio.Queue()
        self._streams[request_id] = (stream, params.n)
        self._send(msg.AddRequest(request_id, list(prompt_ids), params))
        text = RequestText(self.tokenizer, params)
        try:
            async for out in text.follow(stream):
                yield out
        finally:
            self._streams.pop(request_id, None)
            if text.needs_abort:
                self.abort(request_id)

    def abort(self, request_id: str) -> None:
        self._send(msg.Abort(request_id))

    async def score(
        self,
        prompt_ids: list[int],
        thoughts: ThoughtParams,
        top_logprobs: int = 0,
        seed: int | None = None,
    ) -> ScoreOutput:
        self._check_alive()
        call_id = next(self._call_ids)
        future = asyncio.get_running_loop().create_future()
        self._scores[call_id] = future
        self._send(msg.Score(call_id, list(prompt_ids), thoughts, top_logprobs, seed))
        try:
            return await future
        finally:
            self._scores.pop(call_id, None)

    # ------------------------------------------------------------------ messages

    def _check_alive(self) -> None:
        if self.dead is not None:
            raise self.dead
        if self._is_stopping:
            raise RuntimeError("the engine is shutting down")

    def _send(self, message) -> None:
        data = msg.encoder.encode(message)
        with self._send_lock:
            try:
                self._commands.send(data, zmq.NOBLOCK, copy=False)
            except zmq.ZMQError as e:  # no core connected (dead or gone): nothing to tell it
                log.debug("not sent to the engine core (%s): %r", e, message)

    async def _pump(self, results: zmq.asyncio.Socket) -> None:
        while True:
            frame = await results.recv(copy=False)
            self._dispatch(msg.from_core.decode(frame.buffer))

    def _dispatch(self, message) -> None:
        if isinstance(message, msg.Outputs):
            self.num_running, self.num_waiting = message.num_running, message.num_waiting
            for out in message.outputs:
                self._deliver(out.request_id, out)
        elif isinstance(message, msg.Failed):
            self._deliver(message.request_id, _error(message))
        elif isinstance(message, msg.Scored):
            future = self._scores.get(message.call_id)
            if future is not None and not future.done():
                if message.error is None:
                    future.set_result(message.result)
                else:
                    future.set_exception(_error(message))

    def _deliver(self, request_id: str, item: RequestOutput | Exception) -> None:
        target = self._streams.get(request_id)
        if target is not None:
            target[0].put_nowait(item)

    async def _watch(self) -> None:
        """Wait for the core to exit; then end every open stream and call."""
        while self.process.poll() is None:
            await asyncio.sleep(WATCH_INTERVAL_S)
        await asyncio.sleep(DRAIN_GRACE_S)
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        if not self._is_stopping:
            self.dead = EngineDeadError(
                f"the engine core process died (exit code {self.process.returncode})"
            )
            log.error("%s; failing %d open request(s)", self.dead, len(self._streams))
        for request_id, (stream, n) in list(self._streams.items()):
            if self.dead is not None:
                stream.put_nowait(self.dead)
            for index in range(n):  # the processor ignores choices that already finished
                stream.put_nowait(RequestOutput(request_id, index, [], True, FinishReason.ABORT))
        for future in self._scores.values():
            if not future.done():
                future.set_exception(self.dead or RuntimeError("the engine was shut down"))
        self._close()
        if self.dead is not None and self.on_dead is not None:
            self.on_dead(self.dead)

    def _stop_process(self, timeout: float) -> None:
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("the engine core did not stop in %.0f s: killing it", timeout)
            self.process.kill()
            self.process.wait()

    def _close(self) -> None:
        with self._send_lock:
            if not self._context.closed:
                self._context.destroy(linger=0)
        shutil.rmtree(self._dir, ignore_errors=True)
        self._is_closed.set()


def _error(message: msg.Failed | msg.Scored) -> Exception:
    if message.is_request_error:
        return RequestError(message.error, message.param)
    return RuntimeError(message.error)
