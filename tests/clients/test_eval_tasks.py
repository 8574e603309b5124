"""Task modules: data loading (malformed lines, both CSQA layouts, hub), prompt formats of spec
§6 and each protocol's scoring on hand-made responses."""

from __future__ import annotations

import dataclasses
import logging
import math
import sys
import types
from pathlib import Path

import pytest

from clients import csqa, gsm8k
from clients.common import Example, Output
from clients.config import EvalConfig, EvalError
from tests.clients.eval_fakes import CSQA_ROWS, GSM8K_ROWS, write_jsonl

APPLES = Example("test-1", "Tom has 10 apples and buys 8 more.", "18", " 18")
BANK = csqa.parse_record(CSQA_ROWS[0], 1)


def test_load_gsm8k(gsm8k_file: Path) -> None:
    examples = gsm8k.load_examples(str(gsm8k_file))
    assert [(e.id, e.gold, e.gold_text) for e in examples] == [
        ("test-1", "18", " 18"),
        ("test-2", "7", " 7"),
        ("test-3", "-500", " -500"),
    ]
    assert len(gsm8k.load_examples(str(gsm8k_file), limit=2)) == 2


def test_malformed_lines_are_skipped_and_reported(tmp_path: Path, caplog) -> None:
    rows = [
        GSM8K_ROWS[0],
        "{not json",
        {"question": "no answer field"},
        "",
        {"question": "Bad gold?", "answer": "#### many"},
        GSM8K_ROWS[1],
        [1, 2],
    ]
    path = write_jsonl(tmp_path / "broken.jsonl", rows)
    with caplog.at_level(logging.WARNING):
        examples = gsm8k.load_examples(str(path))
    assert [e.gold for e in examples] == ["18", "7"]
    message = caplog.text
    assert "broken.jsonl" in message and "skipped 4 malformed line(s)" in message
    for line in ("2 (", "3 (", "5 (", "7 ("):
        assert line in message


def test_no_valid_lines_fail_clearly(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "junk.jsonl", ["{oops", '{"question": 1}'])
    with pytest.raises(EvalError, match=r"junk\.jsonl: no valid records.*1 \(.*2 \("):
        gsm8k.load_examples(str(path))
    with pytest.raises(EvalError, match="cannot read data file"):
        gsm8k.load_examples(str(tmp_path / "missing.jsonl"))


def test_csqa_layouts_and_duplicates(tmp_path: Path, caplog) -> None:
    hub_row = {
        "id": "hub-1",
        "question": "Where is the sky?",
        "question_concept": "sky",
        "choices": {"label": list("ABCDE"), "text": ["up", "down", "left", "right", "in"]},
        "answerKey": "A",
    }
    bad_key = CSQA_ROWS[1] | {"id": "bad", "answerKey": "F"}
    path = write_jsonl(tmp_path / "csqa.jsonl", [*CSQA_ROWS, hub_row, CSQA_ROWS[0], bad_key])
    with caplog.at_level(logging.WARNING):
        examples = csqa.load_examples(str(path))
    assert [(e.id, e.gold) for e in examples] == [("q-river", "B"), ("q-sky", "E"), ("hub-1", "A")]
    assert examples[2].choices[0] == ("A", "up")
    assert "duplicate id q-river" in caplog.text and "is not one of A-E" in caplog.text


def test_hub_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def load_dataset(name: str, config: str | None, split: str) -> list[dict]:
        calls.append((name, config, split))
        return GSM8K_ROWS

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    assert [e.id for e in gsm8k.load_examples(limit=2)] == ["test-1", "test-2"]
    assert calls == [("openai/gsm8k", "main", "test")]

    def offline(*args: object, **kwargs: object) -> None:
        raise ConnectionError("no network")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=offline))
    with pytest.raises(EvalError, match="tau/commonsense_qa.*no network.*--data-file"):
        csqa.load_examples()


def test_gsm8k_prompt_formats() -> None:
    (direct,) = gsm8k.build_request(APPLES, "direct")
    assert direct.endpoint == "/completions"
    assert direct.body == {
        "prompt": "Q: Tom has 10 apples and buys 8 more.\nA:",
        "max_tokens": 16,
        "temperature": 0.0,
        "stop": ["\n"],
    }
    (soft,) = gsm8k.build_request(APPLES, "paper-soft")
    assert soft.body["prompt"] == "Q: Tom has 10 apples and buys 8 more.\nA: 18\n"
    assert soft.body | {"prompt": ""} == {
        "prompt": "", "max_tokens": 0, "echo": True, "logprobs": 20, "temperature": 0.0,
    }  # fmt: skip
    (cot1,) = gsm8k.build_request(APPLES, "cot", temperature=0.9)
    assert cot1.body["prompt"].endswith("\nA: Let's think step by step.")
    assert (cot1.body["max_tokens"], cot1.body["temperature"]) == (384, 0.9)
    (cot2,) = gsm8k.build_request(APPLES, "cot", cot_text=" 10 + 8 = 18. \n")
    assert cot2.body["prompt"] == (
        "Q: Tom has 10 apples and buys 8 more.\nA: Let's think step by step. 10 + 8 = 18."
        "\nTherefore, the answer (arabic numerals) is"
    )
    assert cot2.body["max_tokens"] == 12
    (chat,) = gsm8k.build_request(APPLES, "chat", max_tokens=99)
    assert chat.endpoint == "/chat/completions" and chat.body["max_tokens"] == 99
    assert "Question: Tom has 10 apples" in chat.body["messages"][0]["content"]
    with pytest.raises(ValueError):
        gsm8k.build_request(APPLES, "loglik")


def test_csqa_prompt_formats() -> None:
    options = "\n(A) river\n(B) bank\n(C) shoe\n(D) cloud\n(E) sand"
    (direct,) = csqa.build_request(BANK, "direct")
    assert direct.body["prompt"] == f"Q: Where would you keep money safe?{options}\nA:"
    assert direct.body["max_tokens"] == 4
    (soft,) = csqa.build_request(BANK, "paper-soft")
    assert soft.body["prompt"] == f"Q: Where would you keep money safe?{options}\nA: B\n"
    loglik = csqa.build_request(BANK, "loglik")
    assert [r.body["prompt"] for r in loglik][:2] == [
        "Question: Where would you keep money safe?\nAnswer: river",
        "Question: Where would you keep money safe?\nAnswer: bank",
    ]
    assert all(r.body["echo"] and r.body["max_tokens"] == 0 for r in loglik)
    (cot2,) = csqa.build_request(BANK, "cot", cot_text=" Banks are safe.")
    assert cot2.body["prompt"].endswith(
        "Banks are safe.\nTherefore, among A through E, the answer is"
    )


def test_generative_scoring_with_votes() -> None:
    outputs = [Output(" 18"), Output(" 17"), Output(" 18.00"), Output(" none")]
    scored = gsm8k.score(APPLES, "direct", outputs)
    assert (scored.prediction, scored.correct, scored.score) == ("18", True, 1.0)
    assert scored.extra["votes"] == ["18", "17", "18", None]
    wrong = gsm8k.score(APPLES, "chat", [Output("The answer is 17.")])
    assert (wrong.prediction, wrong.correct, wrong.score, wrong.extra) == ("17", False, 0.0, {})
    empty = csqa.score(BANK, "direct", [Output(" ")])
    assert (empty.prediction, empty.correct) == (None, False)


def test_paper_soft_scoring_from_logprobs() -> None:
    (request,) = gsm8k.build_request(APPLES, "paper-soft")
    prompt = request.body["prompt"]
    head = prompt[: prompt.rindex(" 18\n")]
    logprobs = {
        "tokens": [head, " ", "1", "8", "\n"],
        "token_logprobs": [None, math.log(0.9), math.log(0.5), math.log(0.3), math.log(0.8)],
        "top_logprobs": [
            None,
            {" ": math.log(0.9)},
            {"1": math.log(0.5), "2": math.log(0.5)},  # 0.5
            {"8": math.log(0.3), "9": math.log(0.1)},  # 0.75
            {"\n": math.log(0.8)},  # 1.0
        ],
        "text_offset": [0, len(head), len(head) + 1, len(head) + 2, len(head) + 3],
    }
    scored = gsm8k.score(APPLES, "paper-soft", [Output("", logprobs=logprobs)])
    assert scored.score == pytest.approx(0.5 * 0.75)
    assert scored.correct is None and scored.prediction is None


def test_loglik_acc_and_acc_norm() -> None:
    context = csqa.loglik_context(BANK)
    texts = ("river", "a big bank", "shoe", "cloud", "sand")
    long_b = dataclasses.replace(BANK, choices=tuple(zip("ABCDE", texts, strict=True)))
    totals = {"A": -2.0, "B": -3.0, "C": -9.0, "D": -9.0, "E": -9.0}
    outputs = []
    for label, text in long_b.choices:
        tokens = [context, f" {text}"]
        lp = {
            "tokens": tokens,
            "token_logprobs": [None, totals[label]],
            "text_offset": [0, len(context)],
        }
        outputs.append(Output("", logprobs=lp))
    scored = csqa.score(long_b, "loglik", outputs)
    # acc: argmax total -> A (-2 > -3); acc_norm: per byte, " river" -2/6 < " a big bank" -3/11
    assert (scored.prediction, scored.correct) == ("A", False)
    assert scored.extra["prediction_norm"] == "B" and scored.extra["correct_norm"] is True
    assert scored.extra["option_logprobs"]["B"] == pytest.approx(-3.0)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="only for csqa"):
        EvalConfig(task="gsm8k", protocol="loglik")
    with pytest.raises(ValueError, match="sampling protocol"):
        EvalConfig(task="csqa", protocol="direct", votes=3)
    with pytest.raises(ValueError, match="contradicts"):
        EvalConfig(task="csqa", thoughts=False, thought_tokens=4)
    assert EvalConfig(task="gsm8k", protocol="cot", votes=8).temperature == 0.9
    assert EvalConfig(task="gsm8k").thought_controls is None
    on = EvalConfig(task="gsm8k", thoughts=True, thought_tokens=8)
    assert on.thought_controls == {"enabled": True, "include": True, "tokens": 8}
    assert on.label == "thoughts=on,tokens=8"
