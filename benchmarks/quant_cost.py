"""What quantisation costs in quality, on held-out data: `python -m benchmarks.quant_cost`.

1. Next-token NLL, base and thought-aided, of each variant on the same held-out GSM8K windows
   (the 5 % split, seed and window length `quietstar train` uses for heads, e.g. those in
   results/training/gsm8k_heads_step200, given with --heads), paired with the
   unquantised model token by token (training/evaluation.py's `token_nlls`; each model samples its
   own thoughts from the same seed). Error bars: 1.96 standard errors of the paired differences.
2. Greedy agreement over `--gen-tokens` tokens: the unquantised engine generates them greedily
   (thoughts off); every variant then predicts each of them teacher-forced, base and
   thought-aided (the unquantised model's thoughts forced on all, so only the weights differ),
   and we count argmax matches with the unquantised model's own predictions.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from .quant_throughput import VARIANT_HELP, parse_variant

HEADS_SPLIT = dict(eval_fraction=0.05, seed=42, seq_len=48, n_ahead=8, n_ahead_talk=2)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quant_cost", description=__doc__)
    p.add_argument("--model", default="default", help="`default` or a checkpoint directory")
    p.add_argument(
        "--heads",
        default=None,
        help="a heads directory whose start/end vectors and mixing head replace the model's "
        "(default: the model's own; a model without trained heads shows no thought gain)",
    )
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--variants", default="none,int8,int4", help=VARIANT_HELP)
    p.add_argument("--data", required=True, help="GSM8K train.jsonl (question/answer records)")
    p.add_argument("--windows", type=int, default=128, help="held-out windows scored (max 374)")
    p.add_argument("--gen-tokens", type=int, default=256, help="greedy tokens for agreement")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--out", default="runs/bench/quant_cost.json", help="JSON output path")
    return p


def held_out_windows(data: str, tokenizer, n: int):
    from training.data import make_extractor, make_windows, read_documents, split_documents

    extract = make_extractor("text", "{question}\n{answer}")
    docs = read_documents(data, extract)
    _, held = split_documents(docs, HEADS_SPLIT["eval_fraction"], HEADS_SPLIT["seed"])
    windows = make_windows(held, tokenizer, HEADS_SPLIT["seq_len"], HEADS_SPLIT["seed"])
    return type(windows)(windows.ids[:n], windows.mask[:n]), held


def load(args, name: str):
    import quietstar

    mode, group, dtype = parse_variant(name, args.dtype)
    return quietstar.load(
        args.model, dtype, heads=args.heads, quantize=mode, quantize_group_size=group
    )


def paired(diff: torch.Tensor) -> dict[str, float]:
    return {
        "mean": diff.mean().item(),
        "ci95": 1.96 * diff.std().item() / math.sqrt(diff.numel()),
    }


def greedy_ids(model, prompt: list[int], n: int) -> list[int]:
    from server.engine import Engine, EngineConfig, SamplingParams

    engine = Engine(EngineConfig(max_num_seqs=1, max_model_len=1024), model=model)
    engine.add_request("g", prompt, SamplingParams(max_tokens=n, temperature=0, ignore_eos=True))
    ids = []
    while engine.has_unfinished():
        for out in engine.step():
            ids += [t.token_id for t in out.tokens]
    return ids


@torch.no_grad()
def teacher_forced_argmax(model, ids: torch.Tensor, L: int, thoughts: torch.Tensor | None):
    from quietstar.parallel import parallel_thought_forward

    out = parallel_thought_forward(
        model, ids, L, thought_ids=thoughts, generator=torch.Generator().manual_seed(0)
    )
    return out.base_logits[0].argmax(-1), out.mixed_logits[0][0].argmax(-1), out.thought_ids


def measure(args) -> dict:
    from training.config import TrainConfig
    from training.evaluation import summarize, token_nlls

    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    cfg = TrainConfig(
        n_ahead=HEADS_SPLIT["n_ahead"],
        n_ahead_talk=HEADS_SPLIT["n_ahead_talk"],
        seq_len=HEADS_SPLIT["seq_len"],
        seed=HEADS_SPLIT["seed"],
    )
    results, nll, preds = {}, {}, {}
    gen = None
    for name in names:
        start = time.perf_counter()
        model = load(args, name)
        if gen is None:  # the baseline's windows and greedy continuation serve every variant
            windows, held = held_out_windows(args.data, model.tokenizer, args.windows)
            prompt = model.tokenizer.encode(held[0].split("\n")[0] + "\n")
            gen = torch.tensor([prompt + greedy_ids(model, prompt, args.gen_tokens)])
        base, thought = token_nlls(model, windows, cfg)
        nll[name] = (base, thought)
        forced = preds[names[0]][2] if preds else None
        preds[name] = teacher_forced_argmax(model, gen, cfg.thought_tokens, forced)
        row = summarize(base, thought)
        row["thought_gain"] = paired(base - thought)
        if name != names[0]:
            b0, t0 = nll[names[0]]
            row["base_nll_vs_baseline"] = paired(base - b0)
            row["thought_nll_vs_baseline"] = paired(thought - t0)
            p0 = preds[names[0]]
            scored = slice(len(prompt) - 1, gen.shape[1] - 1)  # positions predicting generated ids
            row["greedy_agreement_base"] = (preds[name][0] == p0[0])[scored].float().mean().item()
            row["greedy_agreement_thought"] = (
                (preds[name][1] == p0[1])[scored].float().mean().item()
            )
        row["seconds"] = time.perf_counter() - start
        results[name] = row
        print(name, json.dumps(row), flush=True)
        del model
    return {"windows": len(windows.ids), "gen_tokens": args.gen_tokens, "results": results}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    report = measure(args)
    report["environment"] = {
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": args.threads,
        "dtype": args.dtype,
        "model": args.model,
        "heads": args.heads,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
