"""ServerConfig (frozen; contains the EngineConfig) and the `quietstar serve` argparse builder.

Every flag's help text lives once, in its dataclass field's metadata (EngineConfig's knobs become
flags the same way). `RequestDefaults` is what a request falls back to once the model is loaded.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from server import env
from server.engine import EngineConfig, ModelInfo

THOUGHT_MODES = ("auto", "on", "off")
ENGINE_CORES = ("process", "thread")
EFFORT_LEVELS = ("minimal", "low", "medium", "high", "xhigh", "max")  # OpenAI ReasoningEffort
DEFAULT_EFFORT_TOKENS = {"minimal": 2, "low": 4, "medium": 8, "high": 16}
LOG_LEVELS = ("debug", "info", "warning", "error")
# Old flag spellings, still accepted (with a warning): one name per concept is num_thoughts.
DEPRECATED_FLAGS = {
    "--thought-count": "--num-thoughts",
    "--max-parallel-thoughts": "--max-num-thoughts",
}
log = logging.getLogger(__name__)


def parse_effort_tokens(text: str) -> dict[str, int]:
    """ "minimal=2,low=4" -> {"minimal": 2, "low": 4} (ValueError on a malformed pair)."""
    mapping: dict[str, int] = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        level, sep, value = pair.partition("=")
        if not sep or not value.strip().lstrip("-").isdigit():
            raise ValueError(f"expected LEVEL=TOKENS, got {pair!r}")
        mapping[level.strip()] = int(value)
    return mapping


def parse_origins(text: str) -> tuple[str, ...]:
    return tuple(o.strip() for o in text.split(",") if o.strip())


def _flag(
    default: Any,
    help: str,
    group: str,
    parse: Callable[[str], Any] | None = None,
    choices: tuple[str, ...] | None = None,
) -> Any:
    meta = {"help": help, "group": group, "parse": parse, "choices": choices}
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=meta)
    return field(default=default, metadata=meta)


HTTP, THOUGHTS, LOGGING = "HTTP server", "default thought settings", "logging"
REPLICAS = "replicas on Ray Serve (pip install '.[ray]')"


@dataclass(frozen=True)
class ServerConfig:
    engine: EngineConfig = field(default_factory=EngineConfig)
    host: str = _flag("127.0.0.1", "address to bind", HTTP)
    port: int = _flag(8000, "port to bind", HTTP)
    served_model_name: str | None = _flag(
        None, "model id clients send and /v1/models lists (default: the --model value)", HTTP
    )
    api_key: str | None = _flag(
        None, f"bearer token required on /v1/* (default ${env.API_KEY}; unset: no auth)", HTTP
    )
    queue_size: int = _flag(
        128,
        "requests that may wait for an engine slot beyond --max-num-seqs; more get HTTP 429",
        HTTP,
    )
    cors_origins: tuple[str, ...] = _flag(
        (),
        "comma-separated allowed CORS origins, `*` for any (default: CORS off)",
        HTTP,
        parse=parse_origins,
    )
    max_body_bytes: int = _flag(8 << 20, "largest request body in bytes; larger get HTTP 413", HTTP)
    engine_core: str = _flag(
        "process",
        "where the engine runs: `process` (its own process; this one keeps HTTP, tokenisation, "
        "text and SSE) or `thread` (a thread of the HTTP process, sharing its GIL)",
        HTTP,
        choices=ENGINE_CORES,
    )
    shutdown_timeout: float = _flag(
        30.0, "seconds SIGTERM waits for running requests before aborting them", HTTP
    )
    thoughts: str = _flag(
        "auto",
        "thoughts for requests that do not say: auto = on when the checkpoint's heads "
        "are trained, else off",
        THOUGHTS,
        choices=THOUGHT_MODES,
    )
    thought_tokens: int | None = _flag(
        None,
        "default thought length (sampled tokens per visible token; default: the "
        "checkpoint's trained length)",
        THOUGHTS,
    )
    num_thoughts: int = _flag(
        1,
        "default number of parallel thoughts per visible token (a request's `thoughts.count`)",
        THOUGHTS,
    )
    reasoning_effort_tokens: dict[str, int] = _flag(
        DEFAULT_EFFORT_TOKENS,
        "thought length per `reasoning_effort` level, e.g. "
        "'minimal=2,low=4,medium=8,high=16' (the default; levels: "
        + ", ".join(EFFORT_LEVELS)
        + "); `none` always turns thoughts off",
        THOUGHTS,
        parse=parse_effort_tokens,
    )
    log_level: str = _flag("info", "log level", LOGGING, choices=LOG_LEVELS)
    replicas: int | None = _flag(
        None,
        "serve N engine replicas behind Ray Serve's HTTP proxy, each with its own model copy "
        "(default: one engine in this process, and Ray is not imported)",
        REPLICAS,
    )
    ray_address: str | None = _flag(
        None,
        "Ray cluster to join, e.g. `auto` for the one `ray start --head` started on this "
        "machine (default: start a local cluster for this server)",
        REPLICAS,
    )
    replica_cpus: float = _flag(
        1.0,
        "CPUs Ray reserves for each replica (with --device cuda each also gets 1 GPU)",
        REPLICAS,
    )

    def __post_init__(self) -> None:
        e = self.engine
        checks = [
            (1 <= self.port <= 65535, f"--port must be in 1..65535, got {self.port}"),
            (self.queue_size >= 0, f"--queue-size must be >= 0, got {self.queue_size}"),
            (self.max_body_bytes >= 1, f"--max-body-bytes must be >= 1, got {self.max_body_bytes}"),
            (self.shutdown_timeout >= 0, "--shutdown-timeout must be >= 0"),
            (self.engine_core in ENGINE_CORES, f"--engine-core must be one of {ENGINE_CORES}"),
            (self.thoughts in THOUGHT_MODES, f"--thoughts must be one of {THOUGHT_MODES}"),
            (
                self.thought_tokens is None or 0 <= self.thought_tokens <= e.max_thought_tokens,
                f"--thought-tokens must be in 0..{e.max_thought_tokens} (--max-thought-tokens)",
            ),
            (
                1 <= self.num_thoughts <= e.max_num_thoughts,
                f"--num-thoughts must be in 1..{e.max_num_thoughts} (--max-num-thoughts)",
            ),
            (self.log_level in LOG_LEVELS, f"--log-level must be one of {LOG_LEVELS}"),
            (self.served_model_name != "", "--served-model-name must not be empty"),
            (self.replicas is None or self.replicas >= 1, "--replicas must be >= 1"),
            (self.replica_cpus > 0, f"--replica-cpus must be > 0, got {self.replica_cpus}"),
            (
                self.ray_address is None or self.replicas is not None,
                "--ray-address needs --replicas",
            ),
        ]
        for level, tokens in self.reasoning_effort_tokens.items():
            checks.append(
                (
                    level in EFFORT_LEVELS,
                    f"unknown reasoning effort level {level!r} "
                    f"(levels: {', '.join(EFFORT_LEVELS)})",
                )
            )
            checks.append(
                (
                    0 <= tokens <= e.max_thought_tokens,
                    f"reasoning effort {level}="
                    f"{tokens} is outside 0..{e.max_thought_tokens} (--max-thought-tokens)",
                )
            )
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def model_name(self) -> str:
        return self.served_model_name or self.engine.model


@dataclass(frozen=True)
class RequestDefaults:
    """What requests fall back to, resolved against the loaded model (`engine.model_info`)."""

    model_name: str
    max_model_len: int
    trained_thought_tokens: int  # the checkpoint's L, used when a request gives none
    thoughts_enabled: bool
    thought_tokens: int | None
    num_thoughts: int
    max_thought_tokens: int
    max_num_thoughts: int
    effort_tokens: Mapping[str, int]

    @classmethod
    def resolve(cls, config: ServerConfig, model_info: ModelInfo) -> RequestDefaults:
        mode = config.thoughts
        enabled = model_info.heads_trained if mode == "auto" else mode == "on"
        return cls(
            config.model_name,
            model_info.max_model_len,
            model_info.thought_tokens,
            enabled,
            config.thought_tokens,
            config.num_thoughts,
            config.engine.max_thought_tokens,
            config.engine.max_num_thoughts,
            dict(config.reasoning_effort_tokens),
        )


# ---------------------------------------------------------------- command line


def _flag_type(f: dataclasses.Field) -> Callable[[str], Any]:
    parse = f.metadata.get("parse")
    if parse is not None:
        return parse
    kind = str(f.type).split("|")[0].strip()  # "int | None" -> int (annotations are strings)
    return {"int": int, "float": float, "str": str}[kind]


class _Store(argparse._StoreAction):
    """Stores the value; a deprecated spelling of the flag also logs a warning."""

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string in DEPRECATED_FLAGS:
            log.warning("%s is deprecated; use %s", option_string, DEPRECATED_FLAGS[option_string])
        super().__call__(parser, namespace, values, option_string)


def _add_fields(
    group: argparse._ArgumentGroup, fields: list[dataclasses.Field], prefix: str
) -> None:
    for f in fields:
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        help_ = f.metadata["help"]
        if default not in (None, ()) and "(default" not in help_:
            help_ += f" (default: {default})"
        flag = "--" + f.name.replace("_", "-")
        old = [o for o, new in DEPRECATED_FLAGS.items() if new == flag]
        if old:
            help_ += f" (formerly {', '.join(old)}, deprecated)"
        group.add_argument(
            flag,
            *old,
            action=_Store,
            dest=prefix + f.name,
            type=_flag_type(f),
            choices=f.metadata.get("choices"),
            default=argparse.SUPPRESS,
            metavar=None if f.metadata.get("choices") else f.name.upper(),
            help=help_,
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quietstar serve",
        description="OpenAI-compatible server for Quiet-STaR models (thoughts before each token).",
    )
    _add_fields(
        parser.add_argument_group("model and engine"),
        list(dataclasses.fields(EngineConfig)),
        "engine.",
    )
    server_fields = [f for f in dataclasses.fields(ServerConfig) if f.name != "engine"]
    for title in (HTTP, THOUGHTS, LOGGING, REPLICAS):
        _add_fields(
            parser.add_argument_group(title),
            [f for f in server_fields if f.metadata["group"] == title],
            "",
        )
    return parser


def from_args(argv: list[str]) -> ServerConfig:
    """Parse `quietstar serve` flags; exits with status 2 and a usage line on a bad value."""
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    engine_args = {k.removeprefix("engine."): v for k, v in args.items() if k.startswith("engine.")}
    server_args = {k: v for k, v in args.items() if not k.startswith("engine.")}
    server_args.setdefault("api_key", env.api_key())
    try:
        return ServerConfig(engine=EngineConfig(**engine_args), **server_args)
    except ValueError as e:
        parser.error(str(e))
        raise  # unreachable: parser.error exits


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
