"""Request validation against this engine's limits, in one place: the API translates a request
into SamplingParams (whose own fields validate themselves); the engine checks what depends on
the model and the server (context length, vocabulary, thought length and count)."""

from __future__ import annotations

from dataclasses import dataclass

from .sampling_params import RequestError, SamplingParams, ThoughtParams


@dataclass(frozen=True)
class RequestValidator:
    max_model_len: int
    vocab_size: int
    default_thought_len: int  # the checkpoint's L, for requests that give none
    max_thought_len: int  # largest L a request may ask for
    max_num_thoughts: int

    def thought_len(self, thoughts: ThoughtParams) -> int:
        """L for this request."""
        return self.default_thought_len if thoughts.num_tokens is None else thoughts.num_tokens

    def check_request(self, prompt_ids: list[int], params: SamplingParams) -> None:
        """Raise RequestError naming the field at fault when a request cannot be served."""
        self.check_scoring(prompt_ids, params.thoughts)
        if len(prompt_ids) + params.max_tokens > self.max_model_len:
            raise RequestError(
                f"this model's maximum context length is {self.max_model_len} tokens; the request "
                f"has {len(prompt_ids)} prompt tokens and asks for {params.max_tokens} "
                "completion tokens",
                "max_tokens",
            )

    def check_scoring(self, prompt_ids: list[int], thoughts: ThoughtParams) -> None:
        self._check_prompt(prompt_ids)
        if not thoughts.enabled:
            return
        L = self.thought_len(thoughts)
        if L > self.max_thought_len:
            raise RequestError(
                f"thought tokens {L} exceed this server's maximum of {self.max_thought_len}",
                "thoughts.tokens",
            )
        if thoughts.num_thoughts > self.max_num_thoughts:
            raise RequestError(
                f"thought count {thoughts.num_thoughts} exceeds this server's maximum of "
                f"{self.max_num_thoughts}",
                "thoughts.count",
            )

    def _check_prompt(self, prompt_ids: list[int]) -> None:
        if not prompt_ids:
            raise RequestError("the prompt is empty", "prompt")
        if min(prompt_ids) < 0 or max(prompt_ids) >= self.vocab_size:
            raise RequestError(f"prompt token ids must be in [0, {self.vocab_size})", "prompt")
        if len(prompt_ids) > self.max_model_len:
            raise RequestError(
                f"this model's maximum context length is {self.max_model_len} tokens; "
                f"the prompt has {len(prompt_ids)}",
                "prompt",
            )
