"""`EvalConfig`: the settings of one evaluation run, validated; the only place reading the env.

Flag help texts live once, in `clients/__main__.py`. A `--thought-tokens` sweep becomes one
`EvalConfig` per value (`subdir` names its folder under `--out`).
"""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

TASKS = ("gsm8k", "csqa")
PROTOCOLS = ("direct", "paper-soft", "cot", "loglik", "chat")
VOTING_PROTOCOLS = ("cot", "chat")
SCORING_PROTOCOLS = ("paper-soft", "loglik")  # teacher-forced: no generated text
API_KEY_ENV = "QUIETSTAR_API_KEY"
DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
VOTE_TEMPERATURE = 0.9  # spec §6.2: the CoT votes are sampled at T=0.9
# `thoughts.content` on a quietstar server: sampled from the model, or the uniform-token control
THOUGHT_CONTENTS = ("model", "random")


class EvalError(Exception):
    """A user-facing failure (endpoint down, unknown model, bad data): one line, exit code 2."""


def default_api_key() -> str:
    """The API key from $QUIETSTAR_API_KEY, else "EMPTY" (what vLLM-style servers accept)."""
    return os.environ.get(API_KEY_ENV) or "EMPTY"


@dataclass(frozen=True)
class EvalConfig:
    task: str
    protocol: str = "direct"
    base_url: str = DEFAULT_BASE_URL
    api_key: str = "EMPTY"
    model: str | None = None
    data_file: str | None = None
    limit: int | None = None
    concurrency: int = 4
    thoughts: bool | None = None
    thought_tokens: int | None = None
    thought_content: str = "model"
    votes: int = 1
    seed: int = 1234
    max_tokens: int | None = None
    out: str | None = None
    subdir: str = ""
    timeout: float = 600.0
    max_retries: int = 5

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        if self.protocol == "loglik" and self.task != "csqa":
            raise ValueError("--protocol loglik scores answer options and exists only for csqa")
        if self.votes < 1:
            raise ValueError("--votes must be >= 1")
        if self.votes > 1 and self.protocol not in VOTING_PROTOCOLS:
            raise ValueError(f"--votes > 1 needs a sampling protocol {VOTING_PROTOCOLS}")
        if self.thoughts is False and self.thought_tokens is not None:
            raise ValueError("--thoughts off contradicts --thought-tokens")
        if self.thought_tokens is not None and self.thought_tokens < 0:
            raise ValueError("--thought-tokens values must be >= 0 (use 'off' for no thoughts)")
        if self.thought_content not in THOUGHT_CONTENTS:
            raise ValueError(
                f"--thought-content must be one of {THOUGHT_CONTENTS}, got {self.thought_content!r}"
            )
        if self.thought_content != "model" and not self.thoughts:
            raise ValueError(f"--thought-content {self.thought_content} needs --thoughts on")
        for name in ("concurrency", "limit", "max_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
        if self.timeout <= 0 or self.max_retries < 0:
            raise ValueError("--timeout must be > 0 and --max-retries >= 0")

    @property
    def temperature(self) -> float:
        """Greedy unless several votes are sampled (spec §6.2)."""
        return VOTE_TEMPERATURE if self.votes > 1 else 0.0

    @property
    def thought_controls(self) -> dict[str, Any] | None:
        """The request's `thoughts` object; None sends no controls, so any endpoint works."""
        if self.thoughts is None:
            return None
        if not self.thoughts:
            return {"enabled": False}
        controls: dict[str, Any] = {"enabled": True, "include": True}
        if self.thought_tokens is not None:
            controls["tokens"] = self.thought_tokens
        if self.thought_content != "model":
            controls["content"] = self.thought_content
        return controls

    @property
    def label(self) -> str:
        """How the thought setting is named in tables and plots."""
        if self.thoughts is None:
            return "thoughts=default"
        if not self.thoughts:
            return "thoughts=off"
        tokens = "" if self.thought_tokens is None else f",tokens={self.thought_tokens}"
        content = "" if self.thought_content == "model" else f",content={self.thought_content}"
        return f"thoughts=on{tokens}{content}"

    @property
    def slug(self) -> str:
        """The thought setting as a folder name: thoughts-default, -off, -on or -N, with
        -random for the content control."""
        if self.thoughts is None:
            return "thoughts-default"
        if not self.thoughts:
            return "thoughts-off"
        slug = "thoughts-on" if self.thought_tokens is None else f"thoughts-{self.thought_tokens}"
        return slug if self.thought_content == "model" else f"{slug}-{self.thought_content}"

    def out_dir(self, model: str) -> Path:
        """`--out` (plus the sweep subfolder), or runs/eval/MODEL/TASK-PROTOCOL/SLUG."""
        if self.out:
            return Path(self.out) / self.subdir
        return Path("runs", "eval", _safe(model), f"{self.task}-{self.protocol}", self.slug)

    def fingerprint(self, model: str) -> dict[str, Any]:
        """The settings that must match for a rerun to resume an existing results file."""
        keys = (
            "task", "protocol", "data_file", "thoughts", "thought_tokens", "thought_content",
            "votes", "seed",
        )  # fmt: skip
        return {"model": model, "max_tokens": self.max_tokens} | {k: getattr(self, k) for k in keys}

    def public(self) -> dict[str, Any]:
        """The config as recorded in summaries (the API key is never written)."""
        return {k: v for k, v in asdict(self).items() if k != "api_key"}


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"


def configs_from_args(args: argparse.Namespace) -> list[EvalConfig]:
    """One config per `--thought-tokens` value ("off" = a thoughts-off run) and per
    `--thought-content` value (the content applies to thoughts-on runs only); a sweep puts each
    run in its own subfolder of `--out`. Raises ValueError on contradictory settings."""
    swept = ("thoughts", "thought_tokens", "thought_content", "subdir")
    common = {
        f.name: getattr(args, f.name)
        for f in fields(EvalConfig)
        if hasattr(args, f.name) and f.name not in swept
    }
    common["api_key"] = args.api_key or default_api_key()
    contents: list[str] = getattr(args, "thought_content", None) or ["model"]
    values: list[int | str] = args.thought_tokens or []
    if not values:
        configs = [
            EvalConfig(**common, thoughts=_thoughts(args.thoughts, content),
                       thought_content=content)
            for content in contents
        ]  # fmt: skip
        return _in_subdirs(configs)
    configs = []
    for value in values:
        off = value == "off"
        thoughts = False if off else (True if args.thoughts is None else args.thoughts)
        tokens = None if off else int(value)
        # no tokens, nothing to randomise: one run (START -> END) is the no-content control
        for content in ["model"] if off or tokens == 0 else contents:
            configs.append(
                EvalConfig(**common, thoughts=thoughts, thought_tokens=tokens,
                           thought_content=content)
            )  # fmt: skip
    return _in_subdirs(configs)


def _thoughts(flag: bool | None, content: str) -> bool | None:
    """--thoughts as given; unset, a content control implies thoughts on."""
    return flag if flag is not None else (True if content != "model" else None)


def _in_subdirs(configs: list[EvalConfig]) -> list[EvalConfig]:
    return [replace(c, subdir=c.slug) for c in configs] if len(configs) > 1 else configs
