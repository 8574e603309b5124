"""TrainConfig: every knob of `quietstar train`, with the paper's defaults (spec §3.2).

One source of truth per option: the help text lives in `field(metadata=...)`, and the argparse
parser (grouped headers) is generated from the dataclass.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import MISSING, Field, asdict, dataclass, field, fields
from typing import Any

logger = logging.getLogger(__name__)

MODES = ("full", "heads", "lora")
LORA_TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"


def _opt(default: Any, group: str, help_: str, **extra: Any) -> Any:
    return field(default=default, metadata={"group": group, "help": help_, **extra})


@dataclass(frozen=True)
class TrainConfig:
    # -- model
    model: str = _opt(
        "default",
        "model",
        "base model: `default` (SmolLM2-135M-Instruct), a "
        "Hugging Face Llama-family folder, or a Quiet-STaR checkpoint folder",
    )
    mode: str = _opt(
        "full",
        "model",
        "what trains: `full` (every weight, as in the paper), "
        "`heads` (start/end vectors + mixing head; backbone frozen), `lora` (LoRA "
        "on the backbone's Linear layers + heads; merged into saved checkpoints)",
        choices=MODES,
    )
    init_heads: str = _opt(
        "fresh",
        "model",
        "where the Quiet-STaR heads start: `fresh` (w = 0, meta vectors = '---', as in the "
        "paper, even if --model carries trained heads), `shipped` (the heads shipped for "
        "--model default) or a heads directory (quietstar_config.json + quietstar.safetensors)",
    )
    lora_rank: int = _opt(8, "model", "LoRA rank (mode lora)")
    lora_alpha: float = _opt(16.0, "model", "LoRA scale numerator: delta W = alpha/rank * B A")
    lora_targets: str = _opt(LORA_TARGETS, "model", "comma-separated Linear names that get LoRA")
    # -- Quiet-STaR algorithm (spec §3.3-§3.6)
    n_ahead: int = _opt(
        12,
        "quiet-star",
        "spec §3.3 accounting: base position + <start> + "
        "(n_ahead - 3) sampled thought tokens + <end> (paper script: 12)",
    )
    n_ahead_talk: int = _opt(
        4,
        "quiet-star",
        "teacher-forced future tokens scored after each thought (non-myopic loss, spec §3.6)",
    )
    num_thoughts: int = _opt(
        2,
        "quiet-star",
        "thoughts sampled per position (the spec's n_passes); the REINFORCE baseline "
        "is their mean (spec §3.6.5; 1 disables the policy gradient)",
    )
    thought_temperature: float = _opt(
        1.0,
        "quiet-star",
        "temperature thoughts are sampled at (spec §3.5: hard Gumbel = exact sampling at 1)",
    )
    reinforce_temperature: float = _opt(
        3.0,
        "quiet-star",
        "temperature the sampled thought tokens are scored at in the policy loss (spec §3.6.6)",
    )
    policy_loss_beta: float = _opt(1e6, "quiet-star", "weight of the REINFORCE term")
    original_loss_weight: float = _opt(
        0.5,
        "quiet-star",
        "weight of the no-thought NLL in the NLL mix (the talk NLL gets 1 minus this)",
    )
    # -- optimisation
    lr: float = _opt(
        1e-6,
        "optimisation",
        "AdamW peak learning rate (paper: 1e-6, full fine-tuning; heads/LoRA tolerate far larger)",
    )
    warmup_steps: int = _opt(
        20, "optimisation", "linear warmup steps (step t uses lr*(t+1)/warmup)"
    )
    schedule_steps: int = _opt(
        100_000,
        "optimisation",
        "step at which the linear decay reaches "
        "0 (paper: max_steps=100000, so ~constant over its 100 steps)",
    )
    weight_decay: float = _opt(
        0.001,
        "optimisation",
        "AdamW decoupled weight decay (matrices and meta vectors; not biases or norm weights)",
    )
    max_grad_norm: float = _opt(1.0, "optimisation", "global gradient-norm clip (0: off)")
    adam_beta1: float = _opt(0.9, "optimisation", "AdamW beta1")
    adam_beta2: float = _opt(0.999, "optimisation", "AdamW beta2")
    adam_eps: float = _opt(1e-8, "optimisation", "AdamW epsilon")
    max_steps: int = _opt(100, "optimisation", "optimizer steps to run (paper: ~100)")
    batch_size: int = _opt(
        8,
        "optimisation",
        "sequences per optimizer step, over all processes "
        "(each is duplicated num_thoughts times inside the step)",
    )
    seed: int = _opt(42, "optimisation", "seed for data order, windows, thoughts and init")
    dtype: str = _opt(
        "auto",
        "optimisation",
        "compute dtype of the forward (autocast): auto = bf16 on CUDA and on CPUs with native "
        "bf16 matmuls, fp32 where bf16 is emulated; weights and optimizer states stay fp32 "
        "whatever this says (spec §3.7 trap avoided)",
        choices=("auto", "bfloat16", "float32"),
    )
    fsdp: bool = _opt(
        False,
        "optimisation",
        "shard weights, gradients and AdamW states over the processes of `accelerate launch` "
        "with FSDP2 (fully_shard, one unit per decoder layer, weights kept gathered through the "
        "step's unrolled forward); checkpoints are saved sharded and resume exactly",
    )
    activation_checkpointing: bool = _opt(
        False,
        "optimisation",
        "recompute each decoder layer in backward instead of keeping its activations for all "
        "the step's thought passes (less memory, about one more forward of compute)",
    )
    # -- data
    data: str = _opt(
        "open-web-math/open-web-math",
        "data",
        "a datasets hub name (streamed) or a local .jsonl / .json / .txt / .parquet file",
    )
    data_config: str = _opt("", "data", "hub dataset configuration name (e.g. `en` for c4)")
    data_split: str = _opt("train", "data", "hub dataset split")
    max_docs: int = _opt(
        1000, "data", "documents read from the source (paper: the first 1000; 0: all)"
    )
    text_field: str = _opt("text", "data", "record field holding the text (jsonl/json/parquet/hub)")
    text_template: str = _opt(
        "",
        "data",
        "format string over record fields instead of "
        "--text-field, e.g. '{question}\\n{answer}' (\\n, \\t decoded)",
    )
    seq_len: int = _opt(
        256,
        "data",
        "window length: a random window of longer documents, "
        "right-padding of shorter ones (spec §3.1)",
    )
    eval_data: str = _opt("", "data", "held-out data for evaluation (same formats as --data)")
    eval_fraction: float = _opt(
        0.0,
        "data",
        "fraction of --data documents held out for evaluation when --eval-data is not given",
    )
    split_seed: int = _opt(
        -1,
        "data",
        "seed of the --eval-fraction split (-1: --seed); fix it to compare training seeds on "
        "one held-out set",
    )
    eval_every: int = _opt(
        10, "data", "evaluate every N steps (0: only at the end) when there is held-out data"
    )
    eval_max_windows: int = _opt(64, "data", "held-out windows scored per evaluation")
    eval_batch_size: int = _opt(8, "data", "windows per evaluation forward")
    # -- output
    out: str = _opt(
        "runs/quietstar",
        "output",
        "run directory: step_NNNNNN/ checkpoints, metrics.jsonl, metrics.png",
    )
    save_every: int = _opt(100, "output", "checkpoint every N steps (and at the end)")
    keep_last: int = _opt(2, "output", "step checkpoints kept (older ones are deleted)")
    resume: str = _opt(
        "",
        "output",
        "resume from a step_NNNNNN directory, or `auto` for the "
        "last one under --out (model, optimizer, scheduler, RNG, data position)",
    )
    tensorboard: bool = _opt(False, "output", "also write TensorBoard events under OUT/tensorboard")
    plot: bool = _opt(True, "output", "draw OUT/metrics.png at the end (--no-plot to skip)")

    def __post_init__(self) -> None:
        checks = [
            (self.mode in MODES, f"mode must be one of {MODES}, got {self.mode!r}"),
            (self.n_ahead >= 3, "n_ahead must be >= 3 (base position + <start> + <end>)"),
            (self.n_ahead_talk >= 1, "n_ahead_talk must be >= 1"),
            (self.num_thoughts >= 1, "--num-thoughts must be >= 1"),
            (self.seq_len >= self.n_ahead_talk + 2, "seq_len must be >= n_ahead_talk + 2"),
            (self.batch_size >= 1 and self.max_steps >= 0, "batch_size >= 1 and max_steps >= 0"),
            (self.lr > 0 and self.warmup_steps >= 0, "lr must be > 0 and warmup_steps >= 0"),
            (
                self.thought_temperature > 0 and self.reinforce_temperature > 0,
                "temperatures must be > 0",
            ),
            (0.0 <= self.original_loss_weight <= 1.0, "original_loss_weight must be in [0, 1]"),
            (0.0 <= self.eval_fraction < 1.0, "eval_fraction must be in [0, 1)"),
            (self.save_every >= 1 and self.keep_last >= 1, "save_every and keep_last must be >= 1"),
            (self.lora_rank >= 1, "lora_rank must be >= 1"),
            (self.eval_max_windows >= 1 and self.eval_batch_size >= 1, "eval sizes must be >= 1"),
            (bool(self.data), "--data is required"),
            (bool(self.init_heads), "--init-heads must be fresh, shipped or a directory"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def thought_tokens(self) -> int:
        """Sampled thought tokens per position (spec §3.3: n_ahead - 3)."""
        return self.n_ahead - 3

    @property
    def held_out_seed(self) -> int:
        """The seed the --eval-fraction split uses."""
        return self.seed if self.split_seed < 0 else self.split_seed

    @property
    def lora_target_names(self) -> tuple[str, ...]:
        return tuple(t.strip() for t in self.lora_targets.split(",") if t.strip())

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quietstar train",
        description="Quiet-STaR continued pretraining (spec §3). Runs data-parallel unchanged "
        "under `accelerate launch -m training ...`.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in fields(TrainConfig):
        group = f.metadata["group"]
        add_flag(groups.get(group) or groups.setdefault(group, parser.add_argument_group(group)), f)
    return parser


# old spelling -> flag: still accepted, with a warning (one word per concept across the project)
DEPRECATED_FLAGS = {"--n-passes": "--num-thoughts"}


class _WarnIfDeprecated(argparse._StoreAction):
    def __call__(self, parser, namespace, values, option_string=None):
        if option_string in DEPRECATED_FLAGS:
            logger.warning(
                "%s is deprecated; use %s", option_string, DEPRECATED_FLAGS[option_string]
            )
        super().__call__(parser, namespace, values, option_string)


def add_flag(target: argparse._ActionsContainer, f: Field) -> None:
    """One config dataclass field as a flag: its default, type, help and choices."""
    flag = "--" + f.name.replace("_", "-")
    default = f.default if f.default is not MISSING else None
    if isinstance(default, bool):
        target.add_argument(
            flag, action=argparse.BooleanOptionalAction, default=default, help=f.metadata["help"]
        )
    else:
        old = [o for o, new in DEPRECATED_FLAGS.items() if new == flag]
        target.add_argument(
            flag,
            *old,
            action=_WarnIfDeprecated,
            type=type(default),
            default=default,
            help=f.metadata["help"],
            choices=f.metadata.get("choices"),
        )


def parse_config(argv: list[str]) -> TrainConfig:
    """argv -> TrainConfig; invalid values exit with argparse's usage error."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return TrainConfig(**vars(args))
    except ValueError as e:
        parser.error(str(e))
        raise  # unreachable: parser.error exits
