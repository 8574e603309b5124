"""Static checks of the Dockerfile (Docker does not run in CI): its CMD flags parse with the
server's own parser, and the image shape is the agreed one (two stages, non-root, healthcheck)."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def instructions() -> list[list[str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [
        ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")
    ]
    return [(ln.split(None, 1) + [""])[:2] for ln in lines]


def last(name: str) -> str:
    return [arg for op, arg in instructions() if op == name][-1]


def test_cmd_flags_parse_with_the_server_parser():
    from server.config import from_args

    assert json.loads(last("ENTRYPOINT")) == ["quietstar", "serve"]
    config = from_args(json.loads(last("CMD")))
    assert config.host == "0.0.0.0" and config.engine.device == "cuda"
    assert config.engine.model == "default" or config.engine.model.startswith("/models/")
    assert f"127.0.0.1:{config.port}/health" in last("HEALTHCHECK")


def test_two_stages_non_root_and_volumes():
    ops = instructions()
    assert sum(op == "FROM" for op, _ in ops) == 2
    assert re.fullmatch(r"\S+ AS builder", [a for op, a in ops if op == "FROM"][0])
    user = last("USER").split(":")[0]
    assert user not in ("root", "0")
    volumes = json.loads(last("VOLUME"))
    assert "/models" in volumes
    quietstar_home = re.search(r"QUIETSTAR_HOME=(\S+)", " ".join(a for op, a in ops if op == "ENV"))
    assert quietstar_home and quietstar_home.group(1) in volumes
    assert "curl" not in (ROOT / "Dockerfile").read_text()
