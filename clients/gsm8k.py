"""GSM8K (openai/gsm8k, main, test): prompts, answer extraction and scoring for each protocol.

Prompts follow spec §6.1 ("Q: question\\nA:") and §6.2 (zero-shot CoT); `chat` is a plain
instruct prompt whose answer is taken as "#### N", else "The answer is N", else the last number.
"""

from __future__ import annotations

from typing import Any

from clients import prompts
from clients.answers import (
    after_last,
    answer_is_number,
    final_number,
    first_number,
    normalize_number,
)
from clients.common import Example, Output, Request, Scored, load_hub, read_jsonl
from clients.scoring import DIGITS, answer_start, soft_answer_score

NAME = "gsm8k"
PROTOCOLS = ("direct", "paper-soft", "cot", "chat")
HUB = ("openai/gsm8k", "main", "test")
COT_TRIGGER = "\nTherefore, the answer (arabic numerals) is"
DIRECT_MAX_TOKENS = 16
COT_MAX_TOKENS = 384
CHAT_INSTRUCTION = (
    "Solve the following math problem. Reason step by step, then give the final answer on "
    'the last line in the form "The answer is N".'
)


def parse_record(record: dict[str, Any], number: int) -> Example:
    """One {question, answer} record; the gold is the number after '####'."""
    question, answer = record["question"], record["answer"]
    if not isinstance(question, str) or not question.strip():
        raise ValueError("'question' must be a non-empty string")
    if not isinstance(answer, str) or "####" not in answer:
        raise ValueError("'answer' must be a string ending in '#### N'")
    gold_text = answer.split("####")[-1].rstrip()
    gold = normalize_number(gold_text)
    if gold is None:
        raise ValueError(f"gold answer {gold_text.strip()!r} is not a number")
    return Example(id=f"test-{number}", question=question, gold=gold, gold_text=gold_text)


def load_examples(data_file: str | None = None, limit: int | None = None) -> list[Example]:
    """The local JSONL (`--data-file`) or the hub test split; ids are 1-based record numbers."""
    if data_file:
        examples = read_jsonl(data_file, parse_record)
    else:
        rows = load_hub(*HUB)
        examples = [parse_record(row, number) for number, row in enumerate(rows, start=1)]
    return examples[:limit] if limit else examples


def question_prompt(example: Example) -> str:
    return f"Q: {example.question}\nA:"


def build_request(
    example: Example,
    protocol: str,
    *,
    max_tokens: int | None = None,
    temperature: float = 0.0,
    cot_text: str | None = None,
) -> list[Request]:
    """The request(s) one example needs; for `cot`, pass the stage-1 text to get stage 2."""
    prompt = question_prompt(example)
    if protocol == "direct":
        return [prompts.generate(prompt, max_tokens or DIRECT_MAX_TOKENS, temperature, ["\n"])]
    if protocol == "paper-soft":
        # spec §6.1: the gold text keeps its leading space and the model must end it with "\n"
        gold = prompt + example.gold_text + "\n"
        return [prompts.echo_score(gold, prompts.PAPER_SOFT_TOP_LOGPROBS)]
    if protocol == "cot":
        max_tokens = max_tokens or COT_MAX_TOKENS
        return [prompts.cot(prompt, COT_TRIGGER, cot_text, max_tokens, temperature)]
    if protocol == "chat":
        content = f"{CHAT_INSTRUCTION}\n\nQuestion: {example.question}"
        return [prompts.chat(content, max_tokens or prompts.CHAT_MAX_TOKENS, temperature)]
    raise ValueError(f"gsm8k has no protocol {protocol!r}")


def extract_answer(text: str, protocol: str) -> str | None:
    """The normalised number a generation answers with, or None."""
    if protocol == "cot":
        return first_number(after_last(text, COT_TRIGGER))  # spec §6.2: first number after it
    if protocol == "chat":
        return final_number(text)
    return answer_is_number(text) or first_number(text)


def score(example: Example, protocol: str, outputs: list[Output]) -> Scored:
    """Exact match (majority over votes), or the soft metric for `paper-soft`."""
    if protocol == "paper-soft":
        prompt = build_request(example, protocol)[0].body["prompt"]
        logprobs = outputs[0].logprobs or {}
        soft = soft_answer_score(logprobs, answer_start(prompt), DIGITS)
        return Scored(None, soft.score, None, {"answer_tokens": soft.tokens})
    return prompts.score_votes(example, [extract_answer(o.text, protocol) for o in outputs])
