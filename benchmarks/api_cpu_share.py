"""`python -m benchmarks.api_cpu_share`: CPU time the API process spends per streamed token,
against the engine-core process's, thoughts off.

The app (HTTP, tokenisation, detokenisation, SSE) runs in this process with the engine core in
its own; `benchmarks.online_serving` streams completions from a subprocess, so the client's work
is not counted. CPU times (this process: `time.process_time`; the core: /proc/PID/stat, Linux
only, which includes its model load) are robust to other tenants in a way wall-clock rates are
not. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchmarks import online_serving


def core_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.api_cpu_share", description=__doc__)
    p.add_argument("--model", default="default", help="`default` or a checkpoint directory")
    p.add_argument("--dtype", default="bfloat16", help="backbone dtype")
    p.add_argument("--concurrency", type=int, default=8, help="concurrent streams")
    p.add_argument("--num-requests", type=int, default=16, help="timed requests (+1 warm-up)")
    p.add_argument("--max-tokens", type=int, default=128, help="visible tokens per request")
    p.add_argument("--data-file", type=Path, default=online_serving.DEFAULT_DATA, help="prompts")
    a = p.parse_args(argv)

    import uvicorn

    from server.api import build_app
    from server.config import ServerConfig
    from server.engine import EngineConfig, EngineCoreClient

    config = EngineConfig(model=a.model, dtype=a.dtype, max_num_seqs=a.concurrency, num_threads=1)
    engine = EngineCoreClient(config)
    app = build_app(ServerConfig(engine=config, served_model_name="m", log_level="warning"), engine)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    core_cpu = []

    def drive() -> None:
        while not server.started:
            time.sleep(0.05)
        client = [sys.executable, "-m", "benchmarks.online_serving", "--thoughts", "off"]
        client += ["--base-url", f"http://127.0.0.1:{port}/v1", "--data-file", str(a.data_file)]
        client += ["--concurrency", str(a.concurrency), "--num-requests", str(a.num_requests)]
        client += ["--max-tokens", str(a.max_tokens)]
        try:
            subprocess.run(client, check=True, stdout=subprocess.DEVNULL)
            core_cpu.append(core_cpu_seconds(engine.process.pid))
        finally:
            server.should_exit = True

    threading.Thread(target=drive, daemon=True).start()
    start = time.process_time()
    server.run()
    api = time.process_time() - start
    if not core_cpu:
        return 1
    tokens = (a.num_requests + 1) * a.max_tokens  # online_serving sends one warm-up request
    print(
        json.dumps(
            {
                "concurrency": a.concurrency,
                "tokens": tokens,
                "api cpu s": round(api, 3),
                "core cpu s": round(core_cpu[0], 3),
                "api ÷ core": round(api / core_cpu[0], 4),
                "api cpu ms per token": round(1e3 * api / tokens, 4),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
