"""The engine-core process: `python -m server.engine.core`, started by `core_client.py`.

It owns the Engine and runs schedule -> forward -> sample in a busy loop: between steps it drains
the commands the API process sent (add, abort, score, shutdown), then sends each step's outputs
(token ids, log-probs, thought ids, mixing weights) back as one message. Idle, it blocks on its
input socket, checks the cache's integrity and exits if the API process is gone.

Sockets are ZeroMQ PUSH/PULL pairs over `ipc://` (the API process binds, this one connects);
messages are msgspec structs (`core_messages.py`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import sys

import zmq

from . import core_messages as msg
from .config import EngineConfig
from .outputs import FinishReason

log = logging.getLogger(__name__)
IDLE_POLL_MS = 200  # idle: how often to look for a vanished parent


class EngineCore:
    def __init__(self, engine, commands: zmq.Socket, results: zmq.Socket, parent_pid: int):
        self.engine, self.commands, self.results = engine, commands, results
        self.parent_pid = parent_pid
        self.live: dict[str, int] = {}  # request id -> choices not yet finished
        self.is_stopping = False
        self.counts = (0, 0)  # (running, waiting) last reported

    def run(self) -> None:
        while not self.is_stopping:
            if os.getppid() != self.parent_pid:
                log.warning("the API process is gone: exiting")
                return
            busy = self.engine.has_unfinished()
            if self.commands.poll(0 if busy else IDLE_POLL_MS):
                self.apply_commands()
            elif not busy:
                self.engine.check_integrity()
                continue
            if self.engine.has_unfinished():
                self.step()
            else:
                self.send_counts()
        self.abort_all()

    def apply_commands(self) -> None:
        while True:
            try:
                command = msg.to_core.decode(self.commands.recv(zmq.NOBLOCK))
            except zmq.Again:
                return
            if isinstance(command, msg.AddRequest):
                self.add(command)
            elif isinstance(command, msg.Abort):
                self.engine.abort(command.request_id)
            elif isinstance(command, msg.Score):
                self.score(command)
            else:
                self.is_stopping = True
                return

    def add(self, command: msg.AddRequest) -> None:
        try:
            self.engine.add_request(command.request_id, command.prompt_ids, command.params)
        except Exception as e:  # noqa: BLE001 - handed to the caller
            self.send(_failure(msg.Failed, command.request_id, e))
            return
        self.live[command.request_id] = command.params.n

    def score(self, command: msg.Score) -> None:
        try:
            result = self.engine.score(
                command.prompt_ids, command.thoughts, command.top_logprobs, command.seed
            )
        except Exception as e:  # noqa: BLE001 - handed to the caller
            self.send(_failure(msg.Scored, command.call_id, e))
            return
        self.send(msg.Scored(command.call_id, result))

    def step(self) -> None:
        try:
            outputs = self.engine.step()
        except Exception as e:  # noqa: BLE001 - fail the running requests, keep serving
            log.exception("engine step failed")
            self.fail_all(f"engine error: {type(e).__name__}: {e}")
            return
        for out in outputs:
            if out.finished and out.request_id in self.live:
                self.live[out.request_id] -= 1
                if not self.live[out.request_id]:
                    del self.live[out.request_id]
        self.send_counts(outputs)

    def fail_all(self, error: str) -> None:
        for request_id in list(self.live):
            self.engine.abort(request_id)
            self.send(msg.Failed(request_id, error))
        self.live.clear()
        try:
            self.engine.step()  # releases the aborted sequences' slots
        except Exception:  # noqa: BLE001
            log.exception("engine step after a failure failed too")

    def abort_all(self) -> None:
        """Shutdown: every request ends as aborted, and the API process hears of it."""
        for request_id in list(self.live):
            self.engine.abort(request_id)
        outputs = self.engine.step() if self.engine.has_unfinished() else []
        for out in outputs:
            if out.finish_reason is None:
                out.finish_reason = FinishReason.ABORT
        self.send_counts(outputs)

    def send_counts(self, outputs: list | None = None) -> None:
        """The step's outputs, if any, with the counts; nothing when neither changed (most
        thought steps), so the API process is woken once per visible token at most."""
        counts = (self.engine.num_running, self.engine.num_waiting)
        if outputs or counts != self.counts:
            self.counts = counts
            self.send(msg.Outputs(outputs or [], *counts))

    def send(self, message) -> None:
        self.results.send(msg.encoder.encode(message), copy=False)


def _failure(kind, key, error: Exception):
    """A Failed or Scored message for `error`: a ValueError (RequestError: with its `param`) is
    the request's fault and becomes a 400; anything else a 500."""
    if isinstance(error, ValueError):
        return kind(
            key, error=str(error), param=getattr(error, "param", None), is_request_error=True
        )
    return kind(key, error=f"engine error: {type(error).__name__}: {error}")


def core_threads(config: EngineConfig) -> int | None:
    """Torch threads for the core: --num-threads, else on CPU every core. The API process needs
    about 4 % of one core (benchmarks/RESULTS.md, "Engine core in its own process"); on a quiet
    2-core machine, 2 core threads made 12-17 % more tokens per second over HTTP at 8 streams than
    1, and the same at 1 stream. On a machine shared with other busy processes, OpenMP barriers
    wait for preempted threads: pass --num-threads there."""
    if config.num_threads is not None or config.device != "cpu":
        return config.num_threads
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def serve(config: EngineConfig, input_address: str, output_address: str, parent_pid: int) -> int:
    context = zmq.Context(io_threads=1)
    commands = context.socket(zmq.PULL)
    commands.connect(input_address)
    results = context.socket(zmq.PUSH)
    results.setsockopt(zmq.LINGER, 5000)  # the last outputs still reach the API process
    results.connect(output_address)
    try:
        import torch

        from .engine import Engine
        from .limits import ModelInfo, RequestLimits

        threads = core_threads(config)
        if threads:
            torch.set_num_threads(threads)
        engine = Engine(config)
    except Exception as e:  # noqa: BLE001 - reported to the API process, which reports it
        log.exception("loading the engine failed")
        results.send(msg.encoder.encode(msg.StartFailed(f"{type(e).__name__}: {e}")))
        context.destroy(linger=5000)
        return 1
    ready = msg.Ready(
        ModelInfo.of(engine), RequestLimits.of(engine), pickle.dumps(engine.tokenizer)
    )
    results.send(msg.encoder.encode(ready))
    log.info("engine core ready (pid %d, %d torch threads)", os.getpid(), torch.get_num_threads())
    EngineCore(engine, commands, results, parent_pid).run()
    context.destroy(linger=5000)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m server.engine.core", description=__doc__)
    p.add_argument("--config", required=True, help="EngineConfig fields as a JSON object")
    p.add_argument("--input", required=True, help="ZeroMQ address commands arrive on")
    p.add_argument("--output", required=True, help="ZeroMQ address outputs are sent to")
    p.add_argument("--parent-pid", type=int, required=True, help="exit when this process is gone")
    p.add_argument("--log-level", default="info", help="log level")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s[core]: %(message)s",
    )
    config = EngineConfig(**json.loads(args.config))
    return serve(config, args.input, args.output, args.parent_pid)


if __name__ == "__main__":
    sys.exit(main())
