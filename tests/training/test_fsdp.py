"""`quietstar train --fsdp` on 2 CPU processes (gloo), fp32, the tiny random Llama.

Two launches share the process start-up among several runs: (1) a straight 3-step full run
(every step saved), a 2-step LoRA run, and a run SIGKILLed right after its step-1 checkpoint;
(2) that run resumed to step 3 with --activation-checkpointing. Checked here, in one process:
(a) sharded steps, and the held-out evaluation on the gathered weights, equal single-process
ones on the same data, (b) the killed-and-resumed run
logs the straight run's losses and ends on its weights, (c) the shards load unsharded and equal
the gathered weights in the servable files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import quietstar
from tests.training.test_train_accelerate import REPO, free_port
from tests.training.test_train_init_heads import trained_heads_checkpoint
from tests.training.train_support import (  # noqa: F401
    gsm_records,
    make_hf_checkpoint,
    single_thread,
    train_args,
    write_jsonl,
)
from training.checkpointing import load_trainer_state
from training.config import parse_config
from training.data import make_dataloader, make_windows
from training.evaluation import evaluate
from training.fsdp_checkpoint import load_unsharded
from training.metrics import read_metrics
from training.objective import thought_seed
from training.run import (
    _eval_windows,
    build_objective,
    load_corpus,
    make_optimizer,
    make_scheduler,
)

# AdamW divides each gradient element by its own RMS: an element whose gradient is at fp32
# roundoff (embedding rows of tokens absent from the batch, a head input the batch never moves)
# moves by a noisy fraction of lr (1e-3), which summation order alone changes. Every element
# agrees to 1 % of lr except a few such ones (measured: 1.6 % of lr on 7 of 8192 mixing-head
# weights on an AVX2-only CPU); those may reach one whole lr per step.
PARAM_ATOL = 1e-5
NOISY_FRACTION = 0.005  # of a tensor's elements, allowed beyond PARAM_ATOL
LR = 1e-3  # train_args' --lr
COMPARED = ("loss", "base_loss", "talk_loss", "policy_loss", "reward_mean", "grad_norm", "lr")
LORA = ("--mode", "lora", "--lora-rank", "2")

# Two launches of two processes (~50 s on 2 cores): in `make test`, as the 2-process checks
# the sharded path rests on.


def launch(spec: list[dict], path: Path, expect_ok: bool = True) -> None:
    path.write_text(json.dumps(spec))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"]
    cmd += ["--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"]
    cmd += ["--dynamo_backend", "no", "--main_process_port", str(free_port())]
    cmd += ["-m", "tests.training.fsdp_worker", str(path)]
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert (proc.returncode == 0) == expect_ok, proc.stderr[-4000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fsdp")
    heads = trained_heads_checkpoint(tmp)  # non-zero w: rewards well above fp32 noise
    data = write_jsonl(tmp / "gsm.jsonl", gsm_records(16))
    common = ("--init-heads", str(heads), "--keep-last", "5", "--max-steps", "3")
    common += ("--eval-fraction", "0.25")  # 12 training documents, 4 held out, scored at the end

    def args(out: str, *extra: str) -> list[str]:
        return train_args(tmp / "plain", data, tmp / out, *common, *extra)

    launch(
        [
            {
                "argv": args("straight", "--fsdp", "--save-every", "1"),
                "count_collectives": str(tmp / "straight_collectives.json"),
            },
            {
                "argv": args("lora", "--fsdp", *LORA, "--max-steps", "2"),
                "count_collectives": str(tmp / "lora_collectives.json"),
            },
            {"argv": args("resumed", "--fsdp", "--save-every", "1"), "kill_after_step": 1},
        ],
        tmp / "first.json",
        expect_ok=False,  # the last run is killed
    )
    resume = ["--fsdp", "--resume", "auto", "--activation-checkpointing"]
    launch([{"argv": args("resumed", *resume)}], tmp / "second.json")
    return tmp, args


def reference_run(argv: list[str], steps: int, processes: int = 2):
    """The same steps in one process: each step's global batch split as the processes get it,
    each slice with its process's thought seed, gradients averaged, one clip, one AdamW step."""
    cfg = parse_config(argv)
    objective = build_objective(cfg, None, None)
    optimizer = make_optimizer(objective, cfg)
    scheduler = make_scheduler(optimizer, cfg)
    trainable = [p for p in objective.parameters() if p.requires_grad]
    windows = make_windows(load_corpus(cfg)[0], objective.model.tokenizer, cfg.seq_len, cfg.seed)
    loader = make_dataloader(windows, cfg.batch_size, cfg.seed, 0, steps)
    records = []
    for step, batch in enumerate(loader):
        per = cfg.batch_size // processes
        outs = [
            objective(
                batch["ids"][r * per : (r + 1) * per],
                batch["mask"][r * per : (r + 1) * per],
                thought_seed(cfg.seed, step, r),
            )
            for r in range(processes)
        ]
        (sum(o.losses.total for o in outs) / processes).backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        scalars = [o.scalars() for o in outs]
        record = {k: sum(float(s[k].detach()) for s in scalars) / processes for k in scalars[0]}
        records.append(dict(record, grad_norm=float(grad_norm), lr=lr))
    held_out = _eval_windows(load_corpus(cfg)[1], objective.model.tokenizer, cfg)
    records.append({"kind": "eval", **evaluate(objective.model, held_out, cfg)})
    return objective, records


def assert_records_match(got: list[dict], want: list[dict], rel: float = 1e-5) -> None:
    assert len(got) == len(want)
    for step, (g, w) in enumerate(zip(got, want, strict=True), start=1):
        for key in COMPARED:
            # the mean reward is a difference of log-probs (about 0.01 from log-probs near 6):
            # a change of summation order (the processes' halves, the CPU's vector width) moves
            # it by a fraction of those log-probs, not of itself
            scale = abs(w["nll"]) if key == "reward_mean" else 0.0
            assert g[key] == pytest.approx(w[key], rel=rel, abs=max(1e-7, rel * scale)), (
                step,
                key,
            )


def assert_params_close(got: torch.Tensor, want: torch.Tensor, name: str, steps: int) -> None:
    """PARAM_ATOL (+ 1e-5 relative) everywhere but on at most NOISY_FRACTION of the elements,
    which stay within the `steps` AdamW updates of lr each that roundoff can steer."""
    diff = (got.float() - want.float()).abs()
    beyond = ~(diff <= PARAM_ATOL + 1e-5 * want.float().abs())  # a NaN is beyond
    assert beyond.float().mean() <= NOISY_FRACTION, (name, int(beyond.sum()), float(diff.max()))
    assert diff.numel() == 0 or float(diff.max()) <= steps * LR, (name, float(diff.max()))


def train_records(out: Path) -> list[dict]:
    return [r for r in read_metrics(out) if r["kind"] == "train"]


def eval_record(out: Path) -> dict:
    (record,) = [r for r in read_metrics(out) if r["kind"] == "eval"]
    return record


def assert_evals_match(got: dict, want: dict) -> None:
    for key in ("eval_base_nll", "eval_thought_nll", "eval_tokens"):
        assert got[key] == pytest.approx(want[key], rel=1e-5), key


def test_sharded_steps_equal_single_process_steps(runs):
    tmp, args = runs
    objective, records = reference_run(args("straight"), steps=3)
    assert_records_match(train_records(tmp / "straight"), records[:-1])
    assert_evals_match(eval_record(tmp / "straight"), records[-1])  # evaluated on gathered weights
    assert records[-2]["policy_loss"] > 0  # REINFORCE is part of the comparison
    saved = quietstar.load(tmp / "straight" / "step_000003", dtype=torch.float32)
    want = objective.model.state_dict()
    for name, value in saved.state_dict().items():
        assert_params_close(value, want[name], name, steps=3)


def test_lora_sharded_steps_equal_single_process_steps(runs):
    """Frozen backbone weights inside the sharded layer units; LoRA factors in the root unit."""
    tmp, args = runs
    objective, records = reference_run(args("lora", *LORA), steps=2)
    assert_records_match(train_records(tmp / "lora"), records[:-1])
    assert_evals_match(eval_record(tmp / "lora"), records[-1])
    state = load_trainer_state(tmp / "lora" / "step_000002")
    for name, value in objective.lora.state_dict().items():
        assert_params_close(state["lora"][name], value, name, steps=2)
    heads = load_file(tmp / "lora" / "step_000002" / "quietstar.safetensors")
    saved = quietstar.load(tmp / "lora" / "step_000002", dtype=torch.float32)
    with objective.lora.merged():  # the servable files carry the LoRA merged in
        want = objective.model.state_dict()
        for name, value in saved.state_dict().items():
            assert_params_close(value, want[name], name, steps=2)
    assert heads  # the heads file is there and was compared through quietstar.load


def test_killed_and_resumed_run_logs_the_straight_losses(runs):
    tmp, _ = runs
    straight, resumed = train_records(tmp / "straight"), train_records(tmp / "resumed")
    assert [r["step"] for r in resumed] == [1, 2, 3]
    assert_records_match(resumed, straight, rel=1e-6)
    assert [r["tokens_seen"] for r in resumed] == [r["tokens_seen"] for r in straight]
    assert_evals_match(eval_record(tmp / "resumed"), eval_record(tmp / "straight"))
    a = load_unsharded(tmp / "straight" / "step_000003")
    b = load_unsharded(tmp / "resumed" / "step_000003")
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-6, atol=1e-7, msg=name)
    sa = load_trainer_state(tmp / "straight" / "step_000003")
    sb = load_trainer_state(tmp / "resumed" / "step_000003")
    assert sa["samples_seen"] == sb["samples_seen"] == 12
    assert sa["scheduler"]["last_epoch"] == sb["scheduler"]["last_epoch"] == 3


def test_sharded_checkpoint_loads_unsharded_and_matches_the_servable_files(runs):
    tmp, _ = runs
    step = tmp / "straight" / "step_000003"
    shards = sorted(p.name for p in (step / "sharded").iterdir())
    assert shards == [".metadata", "__0_0.distcp", "__1_0.distcp"]  # one file per process
    unsharded = load_unsharded(step)
    served = quietstar.load(step, dtype=torch.float32)  # the serving layout
    served_state = served.state_dict()
    assert {name.removeprefix("model.") for name in unsharded} == set(served_state)
    for name, value in unsharded.items():
        assert torch.equal(value, served_state[name.removeprefix("model.")]), name
    assert load_trainer_state(step)["optimizer"] is None  # AdamW states live in the shards


def test_one_all_gather_and_one_reduce_scatter_per_unit_per_step(runs):
    """Each of the 2 layers runs 1 + (6 - 2) + 2 = 7 times per step; weights kept gathered,
    each unit (2 layers + root) still all-gathers once and reduce-scatters once per step.
    LoRA: the frozen layer units reduce nothing; only the root (factors, heads) does."""
    tmp, _ = runs
    straight = json.loads((tmp / "straight_collectives.json").read_text())
    lora = json.loads((tmp / "lora_collectives.json").read_text())
    assert straight == [{"all_gather_single": 3, "reduce_scatter_single": 3}] * 3
    assert lora == [{"all_gather_single": 3, "reduce_scatter_single": 1}] * 2
