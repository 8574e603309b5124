"""`quietstar serve --replicas 2` on Ray Serve, end to end with the default model: one local Ray
cluster (2 CPUs, one per replica) for the module, driven over HTTP through Ray's proxy.

Streams, auth, errors and /metrics through the proxy; a replica process killed mid-stream ends
its streams with an error event while the other replica's finish, new requests succeed, /health
says "degraded" until Ray has replaced the replica; SIGTERM drains the streams of both replicas.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, NamedTuple

import httpx
import pytest

from tests.api.test_real_server import _tail, free_port

pytest.importorskip("ray.serve", reason="needs the `ray` extra")
from server.replicas.launch import TEARDOWN_MARGIN_S  # noqa: E402 - imports ray

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
API_KEY = "ray-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
HEALTHY = {"status": "ok", "replicas": {"target": 2, "running": 2}}
REPLICA_TITLE = "ServeReplica:quietstar:EngineReplica"  # Ray's process title for a replica
SHUTDOWN_TIMEOUT_S = 30


class Cluster(NamedTuple):
    proc: subprocess.Popen
    base: str
    log: IO[bytes]  # the server's output, shown when a test fails


@pytest.fixture(scope="module")
def cluster(default_model_dir, tmp_path_factory) -> Iterator[Cluster]:
    port = free_port()
    log = open(tmp_path_factory.mktemp("ray") / "serve.log", "w+b")  # noqa: SIM115 - on failure
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "quietstar.cli", "serve", "--replicas", "2"),
            *("--replica-cpus", "1", "--model", str(default_model_dir)),
            *("--served-model-name", "default", "--port", str(port), "--api-key", API_KEY),
            *("--max-num-seqs", "4", "--max-model-len", "512"),
            *("--shutdown-timeout", str(SHUTDOWN_TIMEOUT_S)),
        ],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its Ray processes are ours to find and end
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false", "RAY_USAGE_STATS_ENABLED": "0"},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: health(base)[1].get("status") == "ok", 180, proc, log)
        yield Cluster(proc, base, log)
    finally:
        if proc.poll() is None:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(60)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # Ray's daemons share the session's group
        log.close()


def wait_for(predicate, timeout: float, proc=None, log=None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None:
            assert proc.poll() is None, _tail(log)
        assert time.monotonic() < deadline, "timed out" + (f"\n{_tail(log)}" if log else "")
        time.sleep(0.2)


def health(base: str) -> tuple[int, dict]:
    with contextlib.suppress(httpx.HTTPError, ValueError):
        r = httpx.get(f"{base}/health", timeout=5)
        return r.status_code, r.json()
    return 0, {}


def replica_pids(session: int) -> list[int]:
    """The engine replicas' processes of this server's session (by their Ray process title)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            if REPLICA_TITLE in cmdline and os.getsid(int(entry.name)) == session:
                pids.append(int(entry.name))
    return pids


class Stream(threading.Thread):
    """One streamed completion, read on a thread: its events and how it ended."""

    def __init__(self, base: str, max_tokens: int) -> None:
        super().__init__(daemon=True)
        self.base, self.max_tokens = base, max_tokens
        self.events: list[str] = []
        self.error: Exception | None = None

    def run(self) -> None:
        # Sampled text may reach end-of-sequence early; ignore_eos makes every stream run to
        # max_tokens, so "finished with length" means "was not cut short".
        body = {"model": "default", "prompt": "Once upon a time", "stream": True}
        body.update(max_tokens=self.max_tokens, ignore_eos=True)
        try:
            url = f"{self.base}/v1/completions"
            with httpx.stream("POST", url, json=body, headers=AUTH, timeout=120) as r:
                assert r.status_code == 200, r.read()
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        self.events.append(line.removeprefix("data: "))
        except Exception as e:  # noqa: BLE001 - asserted by the test
            self.error = e

    @property
    def num_text_chunks(self) -> int:
        return sum(1 for e in self.events if e != "[DONE]" and "choices" in json.loads(e))

    @property
    def finish_reason(self) -> str | None:
        chunks = [json.loads(e) for e in self.events if e != "[DONE]" and '"choices"' in e]
        return next((c["choices"][0].get("finish_reason") for c in chunks[::-1]), None)

    @property
    def is_complete(self) -> bool:
        return bool(self.events) and self.events[-1] == "[DONE]" and not self.errors

    @property
    def errors(self) -> list[dict]:
        return [json.loads(e)["error"] for e in self.events if e != "[DONE]" and '"error"' in e]


def start_streams(base: str, count: int, max_tokens: int) -> list[Stream]:
    """Streams started one after another once the previous one answered, so that Ray's router
    (least loaded of two) spreads them over both replicas."""
    streams = []
    for _ in range(count):
        stream = Stream(base, max_tokens)
        stream.start()
        wait_for(lambda s=stream: s.events or s.error is not None, 60)
        streams.append(stream)
    return streams


def complete(base: str, **extra) -> httpx.Response:
    body = {"model": "default", "prompt": "The capital of France is", "max_tokens": 4}
    body.update(ignore_eos=True, **extra)
    return httpx.post(f"{base}/v1/completions", json=body, headers=AUTH, timeout=60)


def test_routes_auth_errors_and_metrics_through_the_proxy(cluster):
    base = cluster.base
    assert health(base) == (200, HEALTHY)
    denied = httpx.get(f"{base}/v1/models", timeout=10)
    assert denied.status_code == 401 and denied.json()["error"]["type"]
    models = httpx.get(f"{base}/v1/models", headers=AUTH, timeout=10).json()
    assert [m["id"] for m in models["data"]] == ["default"]
    bad = complete(base, max_tokens=-1)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "max_tokens"
    ok = complete(base)
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 4
    (stream,) = start_streams(base, 1, 6)
    stream.join(60)
    assert stream.error is None and stream.is_complete and stream.num_text_chunks >= 6
    metrics = httpx.get(f"{base}/metrics", timeout=10).text
    assert 'quietstar_requests_total{endpoint="completions",outcome="success"} 2.0' in metrics


def test_killed_replica_fails_its_streams_and_is_replaced(cluster):
    proc, base, log = cluster
    pids = replica_pids(proc.pid)
    assert len(pids) == 2, pids
    streams = start_streams(base, 4, 200)  # two per replica
    os.kill(pids[0], signal.SIGKILL)
    after_kill = complete(base)  # routed to the survivor, or retried there: nothing was sent
    assert after_kill.status_code == 200, after_kill.text
    wait_for(lambda: health(base)[1].get("status") == "degraded", 30, proc, log)
    code, body = health(base)
    assert code == 200 and body["replicas"]["running"] == 1, body  # until Ray replaces it
    for stream in streams:
        stream.join(300)  # four 200-token streams on one replica: slow on a loaded machine
        assert not stream.is_alive(), f"a stream still open after 300 s: {stream.events[-2:]}"
        assert stream.error is None, stream.error
    failed = [s for s in streams if s.errors]
    assert failed and len(failed) < len(streams), [s.events[-2:] for s in streams]
    for stream in failed:
        (error,) = stream.errors
        assert "replica" in error["message"] and error["type"] == "server_error"
    for stream in (s for s in streams if s not in failed):  # ran to max_tokens on the survivor
        assert stream.is_complete and stream.finish_reason == "length", stream.events[-3:]

    def healthy_again() -> bool:
        return health(base) == (200, HEALTHY) and len(replica_pids(proc.pid)) == 2

    wait_for(healthy_again, 120, proc, log)
    assert pids[0] not in replica_pids(proc.pid)
    assert complete(base).status_code == 200


def test_sigterm_drains_both_replicas(cluster):
    proc, base, log = cluster
    streams = start_streams(base, 4, 60)
    proc.send_signal(signal.SIGTERM)
    for stream in streams:
        stream.join(300)
    assert [s.error for s in streams] == [None] * 4
    for stream in streams:
        assert stream.is_complete and stream.finish_reason == "length", stream.events[-3:]
    # The server bounds its own stopping by --shutdown-timeout + TEARDOWN_MARGIN_S; a little
    # more here, so that a hang shows as the server's own exit (status 1, the step it was in).
    try:
        code = proc.wait(SHUTDOWN_TIMEOUT_S + TEARDOWN_MARGIN_S + 30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the server did not exit after SIGTERM\n{_tail(log)}")
    assert code == 0, _tail(log)
