"""`quietstar train --dtype`: the forward's autocast dtype per machine class (CPU flags faked),
weights always fp32; and a bf16 run where this CPU has native bf16."""

from __future__ import annotations

import pytest
import torch

from quietstar.dtypes import CpuCaps, probe_cpu
from training.config import TrainConfig
from training.run import mixed_precision

NATIVE = CpuCaps("AVX512", mkldnn=True, onednn_bf16=True, amx=False)
EMULATED = CpuCaps("AVX2", mkldnn=True, onednn_bf16=False, amx=False)
needs_cpu = pytest.mark.skipif(torch.cuda.is_available(), reason="CPU rules")


@needs_cpu
@pytest.mark.parametrize(
    ("dtype", "caps", "want"),
    [
        ("auto", NATIVE, "bf16"),
        ("auto", EMULATED, "no"),
        ("float32", NATIVE, "no"),
        ("bfloat16", EMULATED, "bf16"),
    ],
)
def test_autocast_follows_the_cpu_unless_asked(dtype, caps, want):
    precision, choice = mixed_precision(TrainConfig(dtype=dtype, data="unused"), caps)
    assert precision == want
    assert choice.reason


def test_an_unknown_dtype_is_refused_by_the_cli():
    from training.config import parse_config

    with pytest.raises(SystemExit):
        parse_config(["--data", "x", "--dtype", "fp8"])


@needs_cpu
def test_bf16_training_run_keeps_fp32_weights(tmp_path):
    if not probe_cpu().onednn_bf16:
        pytest.skip("bf16 is emulated on this CPU: auto trains in fp32 here")
    from tests.training.train_support import (
        gsm_records,
        make_hf_checkpoint,
        train_args,
        write_jsonl,
    )
    from training.__main__ import main

    model = make_hf_checkpoint(tmp_path / "m")
    data = write_jsonl(tmp_path / "d.jsonl", gsm_records(8))
    args = train_args(model, data, tmp_path / "out")
    args[args.index("--dtype") + 1] = "bfloat16"
    from accelerate.state import AcceleratorState

    # accelerate keeps one mixed precision per process; the other tests run fp32
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        assert main(args) == 0
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    import quietstar

    trained = quietstar.load(tmp_path / "out" / "step_000002", dtype=torch.float32)
    heads = dict(trained.mixing_head.named_parameters())
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in heads.values())
