"""The request base: strict types, rejection of unsupported fields, the Quiet-STaR thought
controls, and the mapping of a request onto the engine's SamplingParams (`to_sampling_params`).

Thought settings resolve field by field: `thoughts.*` (or `thoughts: true|false`), then
`reasoning_effort` (a length preset from --reasoning-effort-tokens; `none` turns thoughts off),
then the server defaults; `include_reasoning` is an alias of `thoughts.include` (default false).
Token budgets: an omitted max_tokens is clamped to the context left (chat) or to 16 (completions,
OpenAI's default); an explicit one that does not fit next to the prompt is a 400, as in vLLM.
`max_completion_tokens` counts thought tokens too (OpenAI counts reasoning tokens in it).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from server.api.errors import bad_request
from server.config import RequestDefaults
from server.engine import SamplingParams, ThoughtParams

INT64 = 2**63
# Extensions of other servers that would change the output, with the values that do not.
UNSUPPORTED_EXTRAS: dict[str, tuple[Any, ...]] = {
    "guided_json": (None,),
    "guided_regex": (None,),
    "guided_choice": (None,),
    "guided_grammar": (None,),
    "structured_outputs": (None,),
    "repetition_penalty": (None, 1),
    "length_penalty": (None, 1),
    "use_beam_search": (None, False),
    "min_tokens": (None, 0),
    "bad_words": (None, []),
    "allowed_token_ids": (None,),
    "logprob_token_ids": (None,),
    "prompt_logprobs": (None,),
    "thinking_token_budget": (None, -1),
    "chat_template": (None,),
    "chat_template_kwargs": (None, {}),
    "add_generation_prompt": (None, True),
    "continue_final_message": (None, False),
    "truncate_prompt_tokens": (None,),
    "include_stop_str_in_output": (None, False),
    "skip_special_tokens": (None, True),
    "grammar": (None,),
    "json_schema": (None,),
    "thinking_budget_tokens": (None, -1),
    "echo": (None, False),  # vLLM's chat echo (completions declare their own `echo`)
}


def unsupported(param: str, why: str = "is not supported by this server") -> PydanticCustomError:
    return PydanticCustomError("unsupported", "{param} " + why, {"param": param})


def reject_unless(value: Any, harmless: tuple[Any, ...], param: str) -> Any:
    if value not in harmless:
        raise unsupported(param)
    return value


class OpenAIModel(BaseModel):
    """Strict types (no "1" for 1); extra fields allowed, logged and ignored."""

    model_config = ConfigDict(extra="allow", strict=True)

    @model_validator(mode="after")
    def _reject_unsupported_extras(self) -> OpenAIModel:
        for name, value in (self.model_extra or {}).items():
            if name in UNSUPPORTED_EXTRAS:
                reject_unless(value, UNSUPPORTED_EXTRAS[name], name)
        return self

    def ignored_fields(self) -> list[str]:
        """Unknown extra fields (known extensions with harmless values are not listed)."""
        return sorted(set(self.model_extra or {}) - set(UNSUPPORTED_EXTRAS))


class ThoughtOptions(BaseModel):
    """Quiet-STaR thought controls (not in OpenAI spec). Unknown keys here are errors."""

    model_config = ConfigDict(extra="forbid", strict=True)
    enabled: bool | None = Field(
        None,
        description="think before each visible token (default: the server's --thoughts; "
        "giving `tokens`, `count` or `content` turns thoughts on)",
    )
    tokens: int | None = Field(
        None,
        ge=0,
        description="sampled thought tokens per visible "
        "token (markers excluded); default: the checkpoint's",
    )
    count: int | None = Field(
        None,
        ge=1,
        description="parallel thoughts per visible token, the request spelling of the "
        "server's num_thoughts (their next-token distributions are averaged)",
    )
    temperature: float | None = Field(
        None, gt=0, le=10, description="thought sampling temperature (default 1, as in training)"
    )
    include: bool | None = Field(
        None,
        description="return the thoughts (`reasoning`, `choices[].thoughts`) and mixing weights",
    )
    content: Literal["model", "random"] | None = Field(
        None,
        description="what a thought holds: `model` (default) samples it from the model as "
        "trained; `random` draws its tokens uniformly (meta tokens excluded), a control for "
        "whether the thoughts' content helps",
    )


class EngineRequest(OpenAIModel):
    """What chat and completions share: the mapping onto the engine's SamplingParams."""

    def thought_params(self, d: RequestDefaults) -> ThoughtParams:
        t = getattr(self, "thoughts", None)
        t = ThoughtOptions(enabled=t) if isinstance(t, bool) else t or ThoughtOptions()
        enabled, tokens = d.thoughts_enabled, d.thought_tokens
        effort = getattr(self, "reasoning_effort", None)
        if effort == "none":
            enabled = False
        elif effort is not None:
            if effort not in d.effort_tokens:
                levels = ", ".join(["none", *d.effort_tokens])
                raise bad_request(
                    f"reasoning_effort must be one of {levels} on this server, got {effort!r}",
                    "reasoning_effort",
                )
            enabled, tokens = True, d.effort_tokens[effort]
        # `thoughts` wins over reasoning_effort field by field
        if t.tokens is not None or t.count is not None or t.content is not None:
            enabled = True
        enabled = enabled if t.enabled is None else t.enabled
        tokens = tokens if t.tokens is None else t.tokens
        num_thoughts = d.num_thoughts if t.count is None else t.count
        if tokens is not None and tokens > d.max_thought_tokens:
            raise bad_request(
                f"thoughts.tokens must be <= {d.max_thought_tokens} (the server's "
                f"--max-thought-tokens), got {tokens}",
                "thoughts.tokens",
            )
        if num_thoughts > d.max_num_thoughts:
            raise bad_request(
                f"thoughts.count must be <= {d.max_num_thoughts} (the server's "
                f"--max-num-thoughts), got {num_thoughts}",
                "thoughts.count",
            )
        include = t.include if t.include is not None else bool(self.include_reasoning)
        return ThoughtParams(
            enabled,
            tokens,
            num_thoughts,
            t.temperature or 1.0,
            include and enabled,
            t.content or "model",
        )

    def visible_budget(self, thoughts: ThoughtParams, d: RequestDefaults) -> int | None:
        """Visible tokens allowed by max_tokens / max_completion_tokens (None: not given).
        max_completion_tokens counts thought tokens too, as OpenAI's counts reasoning tokens."""
        budget = self.max_tokens
        total = getattr(self, "max_completion_tokens", None)
        if total is not None:
            length = thoughts.num_tokens
            length = d.trained_thought_tokens if length is None else length
            per_token = 1 + (thoughts.num_thoughts * length if thoughts.enabled else 0)
            if total < per_token:
                raise bad_request(
                    f"max_completion_tokens ({total}) must cover at least one "
                    f"visible token with its thoughts ({per_token} tokens)",
                    "max_completion_tokens",
                )
            budget = total // per_token if budget is None else min(budget, total // per_token)
        return budget

    def to_sampling_params(
        self, d: RequestDefaults, num_prompt_tokens: int, default_max_tokens: int
    ) -> SamplingParams:
        thoughts = self.thought_params(d)
        budget = self.visible_budget(thoughts, d)
        if budget is None:  # the default is clamped to the context left; explicit values are not
            budget = max(1, min(default_max_tokens, d.max_model_len - num_prompt_tokens))
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return SamplingParams(
            max_tokens=budget,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=max(0, self.top_k or 0),
            min_p=self.min_p or 0.0,
            seed=self.seed,
            stop=stop,
            stop_token_ids=tuple(self.stop_token_ids or ()),
            ignore_eos=bool(self.ignore_eos),
            logprobs=self.num_logprobs,
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            n=self.n or 1,
            thoughts=thoughts,
        )

    @field_validator("stop", check_fields=False)
    @classmethod
    def _no_empty_stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        if value == "" or (isinstance(value, list) and "" in value):
            raise unsupported("stop", "must not contain an empty string")
        return value

    @field_validator("logit_bias", check_fields=False)
    @classmethod
    def _no_logit_bias(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return reject_unless(value, (None, {}), "logit_bias")
