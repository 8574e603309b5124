"""Request shapes shared by both tasks: greedy/sampled generation, echo scoring, two-stage CoT.

Zero-shot CoT follows spec §6.2: "Let's think step by step." then, after truncation, the task's
answer trigger and up to 12 more tokens.
"""

from __future__ import annotations

from clients.answers import majority
from clients.common import CHAT, COMPLETIONS, Example, Request, Scored

COT_CUE = " Let's think step by step."
COT_STOP = ["Q:", "\n\n\n"]  # spec §6.2 truncation markers; truncate_cot re-applies them
COT_ANSWER_TOKENS = 12
PAPER_SOFT_TOP_LOGPROBS = 20
CHAT_MAX_TOKENS = 512


def generate(prompt: str, max_tokens: int, temperature: float, stop: list[str]) -> Request:
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": temperature, "stop": stop}
    return Request(COMPLETIONS, body)


def echo_score(prompt: str, top_logprobs: int) -> Request:
    """Teacher-forced scoring: the prompt echoed with per-token logprobs, nothing generated."""
    body = {"prompt": prompt, "max_tokens": 0, "echo": True, "logprobs": top_logprobs}
    return Request(COMPLETIONS, body | {"temperature": 0.0})


def cot(
    question_prompt: str,
    trigger: str,
    cot_text: str | None,
    max_tokens: int,
    temperature: float,
) -> Request:
    """Stage 1 (cot_text None): the reasoning chain; stage 2: chain + answer trigger, 12 tokens."""
    if cot_text is None:
        return generate(question_prompt + COT_CUE, max_tokens, temperature, COT_STOP)
    prompt = (question_prompt + COT_CUE + cot_text).rstrip() + trigger
    body = {"prompt": prompt, "max_tokens": COT_ANSWER_TOKENS, "temperature": temperature}
    return Request(COMPLETIONS, body)


def chat(content: str, max_tokens: int, temperature: float) -> Request:
    messages = [{"role": "user", "content": content}]
    body = {"messages": messages, "max_tokens": max_tokens, "temperature": temperature}
    return Request(CHAT, body)


def score_votes(example: Example, predictions: list[str | None]) -> Scored:
    """Exact match of the majority answer; the single-sample case is a vote of one."""
    prediction = majority(predictions)
    correct = prediction is not None and prediction == example.gold
    extra = {"votes": predictions} if len(predictions) > 1 else {}
    return Scored(prediction, float(correct), correct, extra)
