"""Activation bytes one Quiet-STaR training step keeps for backward, measured on one decoder
layer of Mistral-7B's shape (bf16, random weights) and reported per layer and for the rest
(embeddings, LM head, losses): the inputs of training/README.md's per-GPU memory table.

    python -m benchmarks.train_memory --n-ahead 8 12 --seq-len 256 --rows 2

Bytes are those autograd saves during the step's forward (each storage counted once), split by
whether a decoder layer was running. With --activation-checkpointing a layer saves nothing but
its input (added here: rows x seq_len x d x 2 bytes per call, which checkpoint keeps outside
autograd's hooks). The thought tokens' keys/values, stored for later passes, are listed apart.
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
from pathlib import Path

import torch

GIB = 1 << 30


def write_one_layer_checkpoint(directory: Path) -> Path:
    from benchmarks.random_checkpoint import SHAPES, write_random_checkpoint

    SHAPES["mistral-7b-1-layer"] = dict(SHAPES["mistral-7b"], num_hidden_layers=1)
    return write_random_checkpoint(directory, "mistral-7b-1-layer")


def saved_bytes(objective, rows: int, seq_len: int) -> dict[str, int]:
    """Bytes saved for backward while a layer runs vs. outside layers, storages deduplicated."""
    inside, storages = [False], {"layers": {}, "rest": {}}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages["layers" if inside[0] else "rest"][storage.data_ptr()] = storage.nbytes()
        return t

    for layer in objective.model.backbone.layers:
        layer.register_forward_pre_hook(lambda *_: inside.__setitem__(0, True))
        layer.register_forward_hook(lambda *_: inside.__setitem__(0, False))
    ids = torch.randint(0, 256, (rows // objective.cfg.num_thoughts, seq_len))
    mask = torch.ones_like(ids, dtype=torch.bool)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        objective(ids, mask, seed=0)
    return {k: sum(v.values()) for k, v in storages.items()}


def measure(model, n_ahead: int, n_talk: int, seq_len: int, rows: int, recompute: bool) -> dict:
    from training.config import TrainConfig
    from training.objective import QuietStarObjective, apply_mode
    from training.recompute import checkpoint_layers

    cfg = TrainConfig(n_ahead=n_ahead, n_ahead_talk=n_talk, seq_len=seq_len, data="x")
    apply_mode(model, cfg)
    if recompute:
        checkpoint_layers(model.backbone)
    passes = n_ahead + n_talk - 1  # spec §3.3
    got = saved_bytes(QuietStarObjective(model, cfg), rows, seq_len)
    d, kv = model.backbone.config.hidden_size, model.backbone.layers[0].self_attn.sizes[1]
    per_layer = got["layers"] + (passes * rows * seq_len * d * 2 if recompute else 0)
    return {
        "n_ahead": n_ahead,
        "passes": passes,
        "activation_checkpointing": recompute,
        "per_layer_gib": per_layer / GIB,
        "rest_gib": got["rest"] / GIB,
        "thought_kv_per_layer_gib": passes * rows * seq_len * 2 * kv * 2 / GIB,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-ahead", type=int, nargs="+", default=[8, 12], help="n_ahead values")
    parser.add_argument("--n-ahead-talk", type=int, default=4, help="n_ahead_talk")
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per window")
    parser.add_argument(
        "--rows", type=int, default=2, help="rows per process (batch x num_thoughts)"
    )
    parser.add_argument(
        "--activation-checkpointing",
        choices=("both", "off", "on"),
        default="both",
        help="measure without it, with it, or both",
    )
    args = parser.parse_args(argv)
    import quietstar

    with tempfile.TemporaryDirectory() as tmp:
        path = write_one_layer_checkpoint(Path(tmp))
        for n_ahead in args.n_ahead:
            for recompute in {"both": (False, True), "off": (False,), "on": (True,)}[
                args.activation_checkpointing
            ]:
                model = quietstar.load(path, dtype=torch.bfloat16)
                result = measure(
                    model, n_ahead, args.n_ahead_talk, args.seq_len, args.rows, recompute
                )
                print(json.dumps(result), flush=True)
                del model
                gc.collect()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
