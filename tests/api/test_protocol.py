"""Protocol models: strict validation, unsupported fields, and the to_sampling_params mapping
(thought precedence: thoughts > reasoning_effort > server defaults; budgets; defaults)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from server.api.errors import APIError, from_validation_errors
from server.api.protocol import ChatCompletionRequest, CompletionRequest
from server.config import RequestDefaults

MESSAGES = [{"role": "user", "content": "hi"}]


def defaults(**overrides) -> RequestDefaults:
    base = dict(
        model_name="m",
        max_model_len=100,
        trained_thought_tokens=5,
        thoughts_enabled=True,
        thought_tokens=None,
        num_thoughts=1,
        max_thought_tokens=32,
        max_num_thoughts=4,
        effort_tokens={"minimal": 2, "low": 4, "medium": 8, "high": 16},
    )
    return RequestDefaults(**{**base, **overrides})


def chat(**fields) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "m", "messages": MESSAGES, **fields})


def params(request=None, d=None, prompt_len=10, default_max=100, **fields):
    request = request or chat(**fields)
    return request.to_sampling_params(d or defaults(), prompt_len, default_max)


def param_of(**fields) -> tuple[str | None, str]:
    with pytest.raises(ValidationError) as info:
        chat(**fields)
    error = from_validation_errors(info.value.errors())
    return error.param, error.message


def test_sampling_fields_map_onto_engine_params():
    p = params(
        temperature=0.0,
        top_p=0.5,
        top_k=-1,
        min_p=0.1,
        seed=3,
        stop="x",
        max_tokens=7,
        n=2,
        presence_penalty=1.0,
        frequency_penalty=-1.0,
        ignore_eos=True,
        stop_token_ids=[5],
        logprobs=True,
        top_logprobs=3,
    )
    assert (p.temperature, p.top_p, p.top_k, p.min_p, p.seed) == (0.0, 0.5, 0, 0.1, 3)
    assert (p.stop, p.stop_token_ids, p.max_tokens, p.n) == (("x",), (5,), 7, 2)
    assert (p.presence_penalty, p.frequency_penalty) == (1.0, -1.0)
    assert (p.ignore_eos, p.logprobs) == (True, 3)
    assert params(logprobs=True).logprobs == 0 and params().logprobs is None
    assert params().temperature == 1.0 and params().top_p == 1.0


def test_default_max_tokens_clamped_to_context_left_explicit_kept():
    assert params(prompt_len=90).max_tokens == 10  # chat default: what the context leaves
    assert params(prompt_len=90, max_tokens=50).max_tokens == 50  # the engine rejects it: 400
    request = CompletionRequest.model_validate({"model": "m", "prompt": "x"})
    assert request.to_sampling_params(defaults(), 3, 16).max_tokens == 16
    assert request.to_sampling_params(defaults(), 95, 16).max_tokens == 5


def test_thought_defaults_follow_server():
    t = params().thoughts
    assert t.enabled and t.num_tokens is None and t.num_thoughts == 1 and not t.include
    t = params(d=defaults(thoughts_enabled=False, thought_tokens=6, num_thoughts=2)).thoughts
    assert not t.enabled and t.num_tokens == 6 and t.num_thoughts == 2


@pytest.mark.parametrize(
    ("effort", "enabled", "tokens"),
    [
        ("none", False, None),
        ("minimal", True, 2),
        ("low", True, 4),
        ("medium", True, 8),
        ("high", True, 16),
    ],
)
def test_reasoning_effort_maps_to_lengths(effort, enabled, tokens):
    t = params(d=defaults(thoughts_enabled=False), reasoning_effort=effort).thoughts
    assert t.enabled is enabled
    if enabled:
        assert t.num_tokens == tokens


def test_reasoning_effort_level_without_mapping_is_400():
    with pytest.raises(APIError) as info:
        params(reasoning_effort="xhigh")
    assert info.value.status == 400 and info.value.param == "reasoning_effort"
    assert "minimal" in info.value.message


def test_thoughts_win_over_reasoning_effort_field_by_field():
    t = params(reasoning_effort="high", thoughts={"tokens": 3}).thoughts
    assert t.enabled and t.num_tokens == 3
    t = params(reasoning_effort="high", thoughts={"enabled": False}).thoughts
    assert not t.enabled
    t = params(reasoning_effort="none", thoughts={"enabled": True}).thoughts
    assert t.enabled and t.num_tokens is None
    t = params(reasoning_effort="low", thoughts={"count": 2, "temperature": 0.5}).thoughts
    assert (t.enabled, t.num_tokens, t.num_thoughts, t.temperature) == (True, 4, 2, 0.5)


def test_thoughts_boolean_shorthand():
    assert not params(thoughts=False).thoughts.enabled
    t = params(d=defaults(thoughts_enabled=False), thoughts=True, reasoning_effort="low").thoughts
    assert t.enabled and t.num_tokens == 4


def test_asking_for_a_length_turns_thoughts_on():
    d = defaults(thoughts_enabled=False)
    assert params(d=d, thoughts={"tokens": 2}).thoughts.enabled
    assert params(d=d, thoughts={"count": 2}).thoughts.enabled
    assert params(d=d, thoughts={"content": "random"}).thoughts.enabled
    assert not params(d=d, thoughts={"tokens": 2, "enabled": False}).thoughts.enabled


def test_thought_content_control_reaches_the_engine():
    assert params(thoughts=True).thoughts.content == "model"
    assert params(thoughts={"content": "random", "tokens": 3}).thoughts.content == "random"


def test_include_reasoning_is_an_alias_and_thoughts_include_wins():
    assert params(include_reasoning=True).thoughts.include
    assert not params(include_reasoning=True, thoughts={"include": False}).thoughts.include
    assert params(include_reasoning=False, thoughts={"include": True}).thoughts.include
    assert not params(include_reasoning=True, reasoning_effort="none").thoughts.include


@pytest.mark.parametrize(
    ("thoughts", "param"), [({"tokens": 33}, "thoughts.tokens"), ({"count": 5}, "thoughts.count")]
)
def test_thought_bounds_from_server_config(thoughts, param):
    with pytest.raises(APIError) as info:
        params(thoughts=thoughts)
    assert info.value.status == 400 and info.value.param == param


def test_max_completion_tokens_counts_thought_tokens():
    # thoughts on, checkpoint length 5, one thought: 6 tokens per visible token
    assert params(max_completion_tokens=60).max_tokens == 10
    assert params(max_completion_tokens=60, max_tokens=4).max_tokens == 4
    assert params(max_completion_tokens=60, thoughts={"tokens": 1, "count": 2}).max_tokens == 20
    assert params(max_completion_tokens=7, reasoning_effort="none").max_tokens == 7
    with pytest.raises(APIError) as info:
        params(max_completion_tokens=5)
    assert info.value.param == "max_completion_tokens"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": "0.5"}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"n": 0}, "n"),
        ({"stream": "yes"}, "stream"),
        ({"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"thoughts": {"tokens": -1}}, "thoughts.tokens"),
        ({"thoughts": {"tokens": 1.5}}, "thoughts.tokens"),
        ({"thoughts": {"temperature": 0}}, "thoughts.temperature"),
        ({"thoughts": {"tokns": 3}}, "thoughts.tokns"),
        ({"reasoning_effort": "extreme"}, "reasoning_effort"),
        ({"stop": ""}, "stop"),
        ({"seed": 2**64}, "seed"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"messages": [{"role": "user"}]}, "messages[0]"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages[0].content[0]",
        ),
    ],
)
def test_invalid_fields_name_their_param(fields, param):
    assert param_of(**fields)[0] == param


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"function_call": {"name": "f"}}, "function_call"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"audio": {"voice": "x"}}, "audio"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"prediction": {"type": "content", "content": "x"}}, "prediction"),
        ({"guided_json": {"type": "object"}}, "guided_json"),
        ({"repetition_penalty": 1.2}, "repetition_penalty"),
        ({"chat_template_kwargs": {"enable_thinking": False}}, "chat_template_kwargs"),
        (
            {"messages": [{"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]}]},
            "tool_calls",
        ),
    ],
)
def test_unsupported_fields_are_rejected_by_name(fields, param):
    got, message = param_of(**fields)
    assert got == param and "not supported" in message


def test_harmless_fields_accepted_unknown_extras_listed():
    request = chat(
        tools=[],
        tool_choice="none",
        response_format={"type": "text"},
        user="u",
        metadata={"a": "b"},
        store=False,
        logit_bias={},
        repetition_penalty=1.0,
        modalities=["text"],
        some_new_field=1,
        another={"x": 1},
    )
    assert request.ignored_fields() == ["another", "some_new_field"]


def test_content_parts_join_and_developer_role():
    request = chat(
        messages=[
            {"role": "developer", "content": "be brief"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            },
        ]
    )
    assert request.messages[1].text == "a\nb"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"prompt": []}, "prompt"),
        ({"prompt": [[]]}, "prompt"),
        ({"prompt": [1, "a"]}, "prompt"),
        ({"prompt": 5}, "prompt"),
        ({"logprobs": 21}, "logprobs"),
        ({"logprobs": True}, "logprobs"),
        ({"suffix": "end"}, "suffix"),
        ({"best_of": 3}, "best_of"),
        ({"max_tokens": -1}, "max_tokens"),
    ],
)
def test_completion_validation(fields, param):
    with pytest.raises(ValidationError) as info:
        CompletionRequest.model_validate({"model": "m", "prompt": "x", **fields})
    assert from_validation_errors(info.value.errors()).param == param


def test_completion_scoring_and_accepted_forms():
    for prompt in ("x", ["x", "y"], [1, 2], [[1], [2, 3]]):
        CompletionRequest.model_validate({"model": "m", "prompt": prompt})
    scoring = CompletionRequest.model_validate(
        {"model": "m", "prompt": "x", "echo": True, "logprobs": 0, "max_tokens": 0, "best_of": 1}
    )
    assert scoring.is_scoring and scoring.num_logprobs == 0
