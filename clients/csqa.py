"""CommonsenseQA (tau/commonsense_qa, validation): prompts, letter extraction and scoring.

`direct`/`paper-soft` use the paper's format (spec §6.1: "Q: stem\\n(A) text ... \\nA:"), `cot`
spec §6.2 with the letter trigger, and `loglik` lm-eval-style option scoring: log P(" " + option
text | "Question: stem\\nAnswer:"), argmax, plus acc_norm (divided by the option's UTF-8 bytes).
"""

from __future__ import annotations

from typing import Any

from clients import prompts
from clients.answers import LETTERS, after_last, extract_letter
from clients.common import Example, Output, Request, Scored, load_hub, read_jsonl
from clients.scoring import LETTER_SET, answer_start, continuation_logprob, soft_answer_score

NAME = "csqa"
PROTOCOLS = ("direct", "paper-soft", "cot", "loglik", "chat")
HUB = ("tau/commonsense_qa", None, "validation")
COT_TRIGGER = "\nTherefore, among A through E, the answer is"
DIRECT_MAX_TOKENS = 4
COT_MAX_TOKENS = 384
LOGLIK_TOP_LOGPROBS = 1
CHAT_INSTRUCTION = (
    "Answer the following multiple-choice question. Think it through briefly, then end with "
    '"The answer is (X)" where X is one of A, B, C, D, E.'
)


def parse_record(record: dict[str, Any], number: int) -> Example:
    """Original layout {answerKey, id, question{stem, choices[{label, text}]}} or the hub's
    {id, question, choices{label[], text[]}, answerKey}; five choices labelled A..E in order."""
    question = record["question"]
    if isinstance(question, dict):
        stem = question["stem"]
        choices = tuple((c["label"], c["text"]) for c in question["choices"])
    else:
        stem = question
        choices = tuple(zip(record["choices"]["label"], record["choices"]["text"], strict=True))
    if not isinstance(stem, str) or not stem.strip():
        raise ValueError("the question stem must be a non-empty string")
    if tuple(label for label, _ in choices) != LETTERS:
        raise ValueError("choices must be labelled A, B, C, D, E in order")
    if not all(isinstance(text, str) and text for _, text in choices):
        raise ValueError("choice texts must be non-empty strings")
    if record["answerKey"] not in LETTERS:
        raise ValueError(f"answerKey {record['answerKey']!r} is not one of A-E")
    return Example(id=str(record["id"]), question=stem, gold=record["answerKey"], choices=choices)


def load_examples(data_file: str | None = None, limit: int | None = None) -> list[Example]:
    """The local JSONL (`--data-file`, either layout) or the hub validation split."""
    if data_file:
        examples = read_jsonl(data_file, parse_record)
    else:
        rows = load_hub(*HUB)
        examples = [parse_record(row, number) for number, row in enumerate(rows, start=1)]
    return examples[:limit] if limit else examples


def options_text(example: Example) -> str:
    return "".join(f"\n({label}) {text}" for label, text in example.choices)


def question_prompt(example: Example) -> str:
    return f"Q: {example.question}{options_text(example)}\nA:"


def loglik_context(example: Example) -> str:
    return f"Question: {example.question}\nAnswer:"


def build_request(
    example: Example,
    protocol: str,
    *,
    max_tokens: int | None = None,
    temperature: float = 0.0,
    cot_text: str | None = None,
) -> list[Request]:
    """The request(s) one example needs (five for `loglik`); for `cot`, pass the stage-1 text
    to get stage 2."""
    prompt = question_prompt(example)
    if protocol == "direct":
        return [prompts.generate(prompt, max_tokens or DIRECT_MAX_TOKENS, temperature, ["\n"])]
    if protocol == "paper-soft":
        gold = f"{prompt} {example.gold}\n"  # spec §6.1: "\nA: " + answerKey + "\n"
        return [prompts.echo_score(gold, prompts.PAPER_SOFT_TOP_LOGPROBS)]
    if protocol == "cot":
        max_tokens = max_tokens or COT_MAX_TOKENS
        return [prompts.cot(prompt, COT_TRIGGER, cot_text, max_tokens, temperature)]
    if protocol == "loglik":
        context = loglik_context(example)
        return [
            prompts.echo_score(f"{context} {text}", LOGLIK_TOP_LOGPROBS)
            for _, text in example.choices
        ]
    if protocol == "chat":
        content = f"{CHAT_INSTRUCTION}\n\nQuestion: {example.question}{options_text(example)}"
        return [prompts.chat(content, max_tokens or prompts.CHAT_MAX_TOKENS, temperature)]
    raise ValueError(f"csqa has no protocol {protocol!r}")


def extract_answer(text: str, protocol: str) -> str | None:
    """The letter A-E a generation answers with, or None."""
    if protocol == "cot":
        text = after_last(text, COT_TRIGGER)
    return extract_letter(text)


def score(example: Example, protocol: str, outputs: list[Output]) -> Scored:
    """Exact match (majority over votes), the soft metric, or the loglik argmax."""
    if protocol == "paper-soft":
        prompt = build_request(example, protocol)[0].body["prompt"]
        soft = soft_answer_score(outputs[0].logprobs or {}, answer_start(prompt), LETTER_SET)
        return Scored(None, soft.score, None, {"answer_tokens": soft.tokens})
    if protocol == "loglik":
        return _score_loglik(example, outputs)
    return prompts.score_votes(example, [extract_answer(o.text, protocol) for o in outputs])


def _score_loglik(example: Example, outputs: list[Output]) -> Scored:
    start = len(loglik_context(example))
    logliks = [continuation_logprob(o.logprobs or {}, start) for o in outputs]
    sizes = [len(f" {text}".encode()) for _, text in example.choices]
    normed = [ll / size for ll, size in zip(logliks, sizes, strict=True)]
    prediction = LETTERS[max(range(len(logliks)), key=logliks.__getitem__)]
    prediction_norm = LETTERS[max(range(len(normed)), key=normed.__getitem__)]
    correct = prediction == example.gold
    extra = {
        "option_logprobs": dict(zip(LETTERS, logliks, strict=True)),
        "prediction_norm": prediction_norm,
        "correct_norm": prediction_norm == example.gold,
    }
    return Scored(prediction, float(correct), correct, extra)
