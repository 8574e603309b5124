"""`quietstar serve` flags -> ServerConfig (containing the EngineConfig), validation, env."""

from __future__ import annotations

import dataclasses

import pytest

from server import __main__ as server_main
from server import env
from server.config import (
    DEFAULT_EFFORT_TOKENS,
    RequestDefaults,
    ServerConfig,
    build_parser,
    from_args,
    parse_effort_tokens,
)
from server.engine import EngineConfig, ModelInfo


def test_defaults_compose_an_engine_config(monkeypatch):
    monkeypatch.delenv(env.API_KEY, raising=False)
    config = from_args([])
    assert isinstance(config.engine, EngineConfig) and config.engine == EngineConfig()
    assert (config.host, config.port, config.api_key, config.thoughts) == (
        "127.0.0.1",
        8000,
        None,
        "auto",
    )
    assert config.reasoning_effort_tokens == DEFAULT_EFFORT_TOKENS
    assert config.model_name == "default"
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.port = 1


def test_flags_reach_both_configs(monkeypatch):
    monkeypatch.setenv(env.API_KEY, "from-env")
    config = from_args(
        [
            "--model",
            "/ckpt",
            "--max-model-len",
            "512",
            "--max-num-seqs",
            "4",
            "--dtype",
            "float32",
            "--port",
            "9001",
            "--served-model-name",
            "qs",
            "--queue-size",
            "0",
            "--cors-origins",
            "http://a, http://b",
            "--max-body-bytes",
            "1000",
            "--thoughts",
            "on",
            "--thought-tokens",
            "6",
            "--num-thoughts",
            "2",
            "--reasoning-effort-tokens",
            "low=1,high=9",
            "--log-level",
            "debug",
        ]
    )
    assert config.engine.model == "/ckpt" and config.engine.max_model_len == 512
    assert config.engine.max_num_seqs == 4 and config.engine.dtype == "float32"
    assert (config.port, config.model_name, config.queue_size) == (9001, "qs", 0)
    assert config.cors_origins == ("http://a", "http://b") and config.max_body_bytes == 1000
    assert (config.thoughts, config.thought_tokens, config.num_thoughts) == ("on", 6, 2)
    assert config.reasoning_effort_tokens == {"low": 1, "high": 9}
    assert config.api_key == "from-env" and config.log_level == "debug"
    assert from_args(["--api-key", "flag"]).api_key == "flag"  # the flag wins


def test_replica_flags():
    assert from_args([]).replicas is None  # no Ray unless asked
    config = from_args(["--replicas", "3", "--ray-address", "auto", "--replica-cpus", "0.5"])
    assert (config.replicas, config.ray_address, config.replica_cpus) == (3, "auto", 0.5)


@pytest.mark.parametrize(
    ("old", "new", "value"),
    [("--thought-count", "num_thoughts", 3), ("--max-parallel-thoughts", "max_num_thoughts", 5)],
)
def test_deprecated_thought_flags_still_work_and_warn(old, new, value, caplog):
    with caplog.at_level("WARNING", logger="server.config"):
        config = from_args([old, str(value)])
    assert getattr(config, new, None) == value or getattr(config.engine, new) == value
    new_flag = "--" + new.replace("_", "-")
    assert f"{old} is deprecated; use {new_flag}" in caplog.text
    caplog.clear()
    assert from_args([new_flag, str(value)]) == config and not caplog.text


def test_help_lists_new_thought_flags_with_their_old_names(capsys):
    with pytest.raises(SystemExit):
        from_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--num-thoughts NUM_THOUGHTS, --thought-count NUM_THOUGHTS" in text
    assert "--max-num-thoughts MAX_NUM_THOUGHTS, --max-parallel-thoughts" in text
    assert "formerly --thought-count, deprecated" in text


@pytest.mark.parametrize(
    "argv",
    [
        ["--thoughts", "maybe"],
        ["--port", "0"],
        ["--num-thoughts", "99"],
        ["--thought-count", "99"],
        ["--thought-tokens", "33"],
        ["--reasoning-effort-tokens", "huge=3"],
        ["--reasoning-effort-tokens", "low"],
        ["--max-model-len", "0"],
        ["--queue-size", "-1"],
        ["--replicas", "0"],
        ["--replicas", "2", "--replica-cpus", "0"],
        ["--ray-address", "auto"],  # needs --replicas
    ],
)
def test_bad_flags_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        from_args(argv)
    assert info.value.code == 2 and "error" in capsys.readouterr().err


def test_every_flag_has_help_and_a_group():
    parser = build_parser()
    titles = {g.title for g in parser._action_groups}
    assert {"model and engine", "HTTP server", "default thought settings", "logging"} <= titles
    for action in parser._actions:
        assert action.help, action.dest
    flags = {s for a in parser._actions for s in a.option_strings}
    assert {"--model", "--max-num-seqs", "--queue-size", "--reasoning-effort-tokens"} <= flags


def test_main_help_exits_zero(capsys):
    with pytest.raises(SystemExit) as info:
        server_main.main(["--help"])
    assert info.value.code == 0 and "quietstar serve" in capsys.readouterr().out


def test_effort_parsing_and_request_defaults():
    assert parse_effort_tokens("minimal=2, low=4,") == {"minimal": 2, "low": 4}
    info = ModelInfo(300, 5, 7, False, (), "here", "float32", "asked for", "cpu")
    auto = RequestDefaults.resolve(ServerConfig(), info)
    assert not auto.thoughts_enabled and auto.max_model_len == 300
    assert auto.trained_thought_tokens == 5
    assert RequestDefaults.resolve(ServerConfig(thoughts="on"), info).thoughts_enabled
    assert RequestDefaults.resolve(
        ServerConfig(), dataclasses.replace(info, heads_trained=True)
    ).thoughts_enabled
