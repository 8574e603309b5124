"""`quietstar bench dtypes` runs end to end on a tiny model and writes its table, JSON and plot
(speeds themselves are measured in benchmarks/, never asserted in tests)."""

from __future__ import annotations

import json

import torch

from benchmarks import dtype_table
from quietstar.dtypes import can_prepack
from tests.support import make_hf_checkpoint


def test_bench_dtypes_writes_every_row_for_both_dtypes(tmp_path):
    model = make_hf_checkpoint(tmp_path / "tiny")
    out = tmp_path / "dtypes.json"
    argv = ["--model", str(model), "--threads", "1", "--tokens", "4", "--context", "16"]
    assert dtype_table.main([*argv, "--repeats", "1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["environment"]["auto"] in ("bfloat16", "float32")
    assert len(report["results"]) == 6
    for row in report["results"]:
        seconds = row["seconds"]
        assert set(seconds) >= {"bfloat16", "float32"} and min(seconds.values()) > 0
        assert row["best"] == min(("bfloat16", "float32"), key=seconds.get)
    if can_prepack(torch.float32)[0]:  # the unpacked fp32 engine is measured beside the packed
        assert "float32 (not pre-packed)" in report["results"][0]["seconds"]
    assert "| work | bfloat16 |" in out.with_suffix(".md").read_text()
    assert out.with_suffix(".png").stat().st_size > 1000
