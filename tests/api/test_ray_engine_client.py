"""ReplicaEngineClient against a scripted deployment handle (no cluster): a replica that dies
before its first output is retried on another, one that dies mid-stream fails the stream with
ReplicaDiedError, abort cancels the Ray call, and /health's verdict follows the replica counts."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("ray.serve", reason="needs the `ray` extra")

from ray.exceptions import ActorDiedError  # noqa: E402

from server.engine import RequestOutput, SamplingParams  # noqa: E402
from server.engine.limits import RequestLimits  # noqa: E402
from server.replicas import engine_client  # noqa: E402
from server.replicas.engine_client import (  # noqa: E402
    ReplicaDiedError,
    ReplicaEngineClient,
    ReplicaInfo,
)

LIMITS = RequestLimits(
    max_model_len=64,
    vocab_size=100,
    default_thought_tokens=2,
    max_thought_tokens=8,
    max_num_thoughts=2,
)


class Call:
    """One streaming call: yields `outputs`, then raises `error` (if any)."""

    def __init__(self, outputs: list[RequestOutput], error: Exception | None) -> None:
        self.outputs, self.error, self.is_cancelled = outputs, error, False

    def __aiter__(self):
        return self._run()

    async def _run(self):
        for out in self.outputs:
            await asyncio.sleep(0)
            yield out
        if self.error is not None:
            raise self.error

    def cancel(self) -> None:
        self.is_cancelled = True


class Handle:
    """A DeploymentHandle whose `generate` calls follow a script, one Call per attempt."""

    deployment_name = "EngineReplica"

    def __init__(self, script: list[Call]) -> None:
        self.script, self.calls = list(script), []
        self.generate = self

    def options(self, **_) -> Handle:
        return self

    def remote(self, *args) -> Call:
        self.calls.append(args)
        return self.script.pop(0)


def client(script: list[Call]) -> tuple[ReplicaEngineClient, Handle]:
    handle = Handle(script)
    return ReplicaEngineClient(handle, ReplicaInfo({}, LIMITS, None), "app", 2), handle


def outputs(n: int) -> list[RequestOutput]:
    return [RequestOutput("r", 0, [], i == n - 1) for i in range(n)]


async def collect(c: ReplicaEngineClient) -> list[RequestOutput]:
    return [out async for out in c.generate("r", [1, 2], SamplingParams(max_tokens=4))]


@pytest.fixture(autouse=True)
def no_retry_delay(monkeypatch):
    monkeypatch.setattr(engine_client, "RETRY_DELAY_S", 0.0)


def test_death_before_the_first_output_is_retried():
    c, handle = client([Call([], ActorDiedError()), Call(outputs(3), None)])
    assert len(asyncio.run(collect(c))) == 3
    assert len(handle.calls) == 2 and c.num_running == 0


def test_death_mid_stream_fails_the_stream():
    c, handle = client([Call(outputs(2)[:1], ActorDiedError()), Call(outputs(3), None)])

    async def run() -> list[RequestOutput]:
        seen = []
        with pytest.raises(ReplicaDiedError, match="died mid-answer"):
            async for out in c.generate("r", [1, 2], SamplingParams(max_tokens=4)):
                seen.append(out)
        return seen

    assert len(asyncio.run(run())) == 1  # what was sent stays sent; no second attempt
    assert len(handle.calls) == 1


def test_retries_give_up_with_a_clear_error():
    attempts = engine_client.RETRIES + 1
    c, handle = client([Call([], ActorDiedError()) for _ in range(attempts)])
    with pytest.raises(ReplicaDiedError, match="no engine replica could take the request"):
        asyncio.run(collect(c))
    assert len(handle.calls) == attempts


def test_invalid_request_is_refused_before_any_call():
    c, handle = client([])
    with pytest.raises(ValueError):
        asyncio.run(
            anext(c.generate("r", list(range(100)), SamplingParams(max_tokens=4)).__aiter__())
        )
    assert handle.calls == []


def test_abort_cancels_the_open_call():
    call = Call(outputs(5), None)
    c, _ = client([call])

    async def run() -> None:
        stream = c.generate("r", [1, 2], SamplingParams(max_tokens=4))
        await anext(stream)
        assert c.num_running == 1
        c.abort("r")
        await stream.aclose()

    asyncio.run(run())
    assert call.is_cancelled and c.num_running == 0


@pytest.mark.parametrize(
    ("states", "verdict"),
    [
        ({"RUNNING": 2}, ("ok", 200)),
        ({"RUNNING": 1, "STARTING": 1}, ("degraded", 200)),
        ({"STARTING": 2}, ("unavailable", 503)),
    ],
)
def test_health_follows_the_replica_counts(monkeypatch, states, verdict):
    from types import SimpleNamespace

    deployment = SimpleNamespace(replica_states=states)
    app = SimpleNamespace(deployments={"EngineReplica": deployment})
    status = SimpleNamespace(applications={"app": app})
    monkeypatch.setattr(engine_client.serve, "status", lambda: status)
    c, _ = client([])
    body, code = asyncio.run(c.replica_health())
    assert (body["status"], code) == verdict
    assert body["replicas"]["target"] == 2
    assert body["replicas"]["running"] == states.get("RUNNING", 0)


def test_a_dead_engine_core_inside_a_replica_counts_as_a_dead_replica():
    from server.engine import EngineDeadError

    c, handle = client([Call([], EngineDeadError("core died")), Call(outputs(2), None)])
    assert len(asyncio.run(collect(c))) == 2 and len(handle.calls) == 2
