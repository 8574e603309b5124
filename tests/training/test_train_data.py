"""Data: readers, windows (spec §3.1), deterministic order, and bad data failing before compute."""

from __future__ import annotations

import pytest
import torch

import training.checkpointing
from tests.training.train_support import (  # noqa: F401
    byte_tokenizer,
    gsm_records,
    single_thread,
    train_args,
    write_jsonl,
)
from training.__main__ import main
from training.data import (
    DataError,
    WindowSampler,
    make_extractor,
    make_windows,
    read_documents,
    split_documents,
)

TEXT = make_extractor("text", "")


def test_readers_jsonl_json_txt_parquet(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"text": "one"}, {"text": "  "}, {"text": "two"}])
    assert read_documents(str(tmp_path / "a.jsonl"), TEXT) == ["one", "two"]  # empty skipped
    (tmp_path / "b.json").write_text('[{"text": "x"}, "y"]')
    assert read_documents(str(tmp_path / "b.json"), TEXT) == ["x", "y"]
    (tmp_path / "c.txt").write_text("para one\nstill one\n\npara two\n")
    assert read_documents(str(tmp_path / "c.txt"), TEXT) == ["para one\nstill one", "para two\n"]
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["p", "q", "r"]}), tmp_path / "d.parquet")
    assert read_documents(str(tmp_path / "d.parquet"), TEXT, max_docs=2) == ["p", "q"]


def test_text_template_joins_fields(tmp_path):
    path = write_jsonl(tmp_path / "g.jsonl", [{"question": "Q?", "answer": "A."}])
    assert read_documents(str(path), make_extractor("text", "{question}\\n{answer}")) == ["Q?\nA."]


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "file is empty"),
        ('{"text": "ok"}\n{"body": "no text"}\n', "bad.jsonl:2: no field 'text'"),
        ('{"text": "ok"}\nnot json\n', "bad.jsonl:2: invalid JSON"),
        ('{"text": 5}\n', "bad.jsonl:1: field 'text' is int"),
        ('{"text": ""}\n{"text": "   "}\n', "no usable documents"),
        ("[1, 2]\n", "bad.jsonl:1: expected a JSON object"),
    ],
)
def test_bad_jsonl_errors_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=message.replace("?", r"\?")):
        read_documents(str(path), TEXT)


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl: no such file"):
        read_documents(str(tmp_path / "nope.jsonl"), TEXT)
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported file type"):
        read_documents(str(tmp_path / "x.csv"), TEXT)
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(DataError, match="bad.parquet: unreadable parquet"):
        read_documents(str(tmp_path / "bad.parquet"), TEXT)


@pytest.mark.parametrize("case", ["empty", "missing_field", "nonexistent", "template_key"])
def test_cli_bad_data_fails_before_model_loading(tmp_path, capsys, monkeypatch, case):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the data was validated")

    monkeypatch.setattr(training.checkpointing.quietstar, "load", no_model)
    data = tmp_path / "d.jsonl"
    if case == "empty":
        data.write_text("")
    elif case in ("missing_field", "template_key"):
        write_jsonl(data, [{"question": "q", "answer": "a"}, {"question": "q"}])
    args = train_args(tmp_path / "no-model", data, tmp_path / "out")
    if case == "missing_field":
        args += ["--text-template", ""]  # falls back to --text-field text
    assert main(args) == 2
    err = capsys.readouterr().err
    expected = {
        "empty": "d.jsonl: file is empty",
        "missing_field": "d.jsonl:1: no field 'text'",
        "nonexistent": "d.jsonl: no such file",
        "template_key": "d.jsonl:2: --text-template",
    }
    assert expected[case] in err
    assert not (tmp_path / "out").exists()


def test_windows_random_window_or_right_padding():
    tok = byte_tokenizer()
    docs = ["abcdefghijklmnopqrstuvwxyz" * 2, "short", "x"]  # 'x' is 1 token: nothing to predict
    w1, w2 = make_windows(docs, tok, 8, seed=42), make_windows(docs, tok, 8, seed=42)
    assert torch.equal(w1.ids, w2.ids) and w1.ids.shape == (2, 8)
    long_text = tok.decode(w1.ids[0].tolist())
    assert long_text in docs[0] and w1.mask[0].all()
    assert w1.mask[1].tolist() == [True] * 5 + [False] * 3
    starts = {tok.decode(make_windows(docs[:1], tok, 8, seed=s).ids[0].tolist()) for s in range(8)}
    assert len(starts) > 1  # the window start is random (seeded)


def test_sampler_is_an_endless_seeded_stream_that_resumes_anywhere():
    full = list(WindowSampler(5, seed=1, start=0, stop=17))
    assert sorted(full[:5]) == list(range(5)) and sorted(full[5:10]) == list(range(5))
    assert full[:5] != full[5:10]  # a new permutation per epoch
    for start in (3, 5, 12):
        assert list(WindowSampler(5, seed=1, start=start, stop=17)) == full[start:]


def test_split_documents_is_deterministic_and_disjoint():
    docs = [f"d{i}" for i in range(20)]
    train, held = split_documents(docs, 0.25, seed=3)
    assert (train, held) == split_documents(docs, 0.25, seed=3)
    assert len(held) == 5 and not set(train) & set(held) and len(train) == 15
    assert split_documents(docs, 0.0, seed=3) == (docs, [])


def test_hub_datasets_are_streamed_and_capped(monkeypatch):
    import datasets

    calls = []

    def fake_load(name, config, split, streaming):
        calls.append((name, config, split, streaming))
        return iter([{"text": f"doc {i}"} for i in range(10)])

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    docs = read_documents("org/corpus", TEXT, max_docs=3, hub_config="en", hub_split="train")
    assert docs == ["doc 0", "doc 1", "doc 2"]
    assert calls == [("org/corpus", "en", "train", True)]


def test_hub_failure_names_the_dataset(monkeypatch, tmp_path):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match="org/corpus: not a local file and cannot load it"):
        read_documents("org/corpus", TEXT)
    with pytest.raises(DataError, match="is a directory"):
        read_documents(str(tmp_path), TEXT)
