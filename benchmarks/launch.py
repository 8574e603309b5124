"""`bench serve --launch "FLAGS"`: start `python -m server FLAGS` on a free port, wait until its
/health says ok (with --replicas: every replica running), hand back its base URL, and stop it
with SIGTERM afterwards. A subprocess seen only through HTTP: nothing of the server is imported.
"""

from __future__ import annotations

import contextlib
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 600.0
STOP_TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def is_ready(base: str) -> bool:
    with contextlib.suppress(httpx.HTTPError, ValueError):
        r = httpx.get(f"{base}/health", timeout=5)
        return r.status_code == 200 and r.json().get("status") == "ok"
    return False


@contextlib.contextmanager
def launched(flags: str, log_path: Path) -> Iterator[str]:
    """The base URL (ending in /v1) of a server started with `flags`; its log goes to log_path."""
    port = free_port()
    cmd = [sys.executable, "-m", "server", *shlex.split(flags), "--port", str(port)]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while not is_ready(base):
                if proc.poll() is not None:
                    raise OSError(f"the server exited with {proc.returncode}; see {log_path}")
                if time.monotonic() > deadline:
                    raise OSError(f"the server was not ready in {START_TIMEOUT_S:.0f} s")
                time.sleep(0.5)
            yield base + "/v1"
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
