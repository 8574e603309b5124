"""`quietstar eval {gsm8k,csqa,report}`: argparse front end; prints the final results table.

Exit codes: 0 done, 2 usage error / endpoint down / wrong model / bad data, 130 interrupted
(finished examples are kept; rerun with the same --out to resume).
"""

from __future__ import annotations

import argparse
import logging
import sys

from clients.config import (
    DEFAULT_BASE_URL,
    PROTOCOLS,
    TASKS,
    THOUGHT_CONTENTS,
    EvalError,
    configs_from_args,
)

TASK_HELP = {
    "gsm8k": "GSM8K (openai/gsm8k main, test split)",
    "csqa": "CommonsenseQA (tau/commonsense_qa, validation split)",
}


def _on_off(value: str) -> bool:
    if value not in ("on", "off"):
        raise argparse.ArgumentTypeError("expected 'on' or 'off'")
    return value == "on"


def _sweep(value: str) -> list[int | str]:
    items: list[int | str] = []
    for item in value.split(","):
        item = item.strip()
        if item == "off":
            items.append(item)
        elif item.isdigit():
            items.append(int(item))
        else:
            raise argparse.ArgumentTypeError(f"{item!r} is neither an integer >= 0 nor 'off'")
    return items


def _contents(value: str) -> list[str]:
    items = [item.strip() for item in value.split(",")]
    for item in items:
        if item not in THOUGHT_CONTENTS:
            raise argparse.ArgumentTypeError(
                f"{item!r} is not one of {', '.join(THOUGHT_CONTENTS)}"
            )
    return items


def _eval_options() -> argparse.ArgumentParser:
    """Options shared by the task subcommands (a parent parser with grouped headers)."""
    parser = argparse.ArgumentParser(add_help=False)
    endpoint = parser.add_argument_group("endpoint")
    endpoint.add_argument(
        "--base-url",
        default=DEFAULT_BASE_URL,
        help=f"OpenAI-compatible API root (default {DEFAULT_BASE_URL})",
    )
    endpoint.add_argument(
        "--api-key", default=None, help="bearer token (default $QUIETSTAR_API_KEY, else 'EMPTY')"
    )
    endpoint.add_argument(
        "--model", default=None, help="model id (default: the first id listed by GET /v1/models)"
    )
    endpoint.add_argument(
        "--concurrency",
        type=int,
        default=4,
        help="examples and requests in flight at once (default 4)",
    )
    endpoint.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="seconds per HTTP request before it is retried (default 600)",
    )
    endpoint.add_argument(
        "--max-retries",
        type=int,
        default=5,
        help="retries on 429, 5xx, timeouts, dropped connections (default 5)",
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--data-file",
        default=None,
        help="local JSONL in the original layout (default: the Hugging Face hub)",
    )
    data.add_argument("--limit", type=int, default=None, help="evaluate only the first N examples")
    protocol = parser.add_argument_group("protocol")
    protocol.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="direct",
        help="direct: paper zero-shot prompt, greedy, exact match; paper-soft: "
        "the paper's soft answer-probability metric; cot: zero-shot CoT with "
        "majority vote; loglik: lm-eval option log-likelihood (csqa only); "
        "chat: instruct prompt via /v1/chat/completions (default direct)",
    )
    protocol.add_argument(
        "--votes",
        type=int,
        default=1,
        help="samples per question for cot/chat, majority vote; >1 samples "
        "at temperature 0.9, else greedy (default 1)",
    )
    protocol.add_argument(
        "--seed", type=int, default=1234, help="request seed; vote i sends seed+i (default 1234)"
    )
    protocol.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        help="generation length (default 16 gsm8k / 4 csqa direct, 384 cot, 512 chat)",
    )
    thoughts = parser.add_argument_group("thoughts (Quiet-STaR request controls)")
    thoughts.add_argument(
        "--thoughts",
        type=_on_off,
        default=None,
        metavar="{on,off}",
        help="send thoughts.enabled (unset: send no thought controls at all)",
    )
    thoughts.add_argument(
        "--thought-tokens",
        type=_sweep,
        default=None,
        metavar="N[,N...]",
        help="thought tokens per position (0: START -> END only, the no-content control); "
        "several values (and 'off') run a sweep, one subfolder of --out each; implies --thoughts on",
    )
    thoughts.add_argument(
        "--thought-content",
        type=_contents,
        default=None,
        metavar="{model,random}[,...]",
        help="what the server puts in a thought (quietstar servers): 'model' samples it (the "
        "default), 'random' draws uniform tokens, a control for the thoughts' content; both "
        "values run each setting twice, one subfolder each; implies --thoughts on",
    )
    output = parser.add_argument_group("output")
    output.add_argument(
        "--out",
        default=None,
        help="run folder; rerunning with the same folder resumes "
        "(default runs/eval/MODEL/TASK-PROTOCOL/THOUGHTS)",
    )
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quietstar eval",
        description="Evaluate an OpenAI-compatible endpoint on GSM8K / CommonsenseQA.",
    )
    commands = parser.add_subparsers(dest="task", required=True, metavar="{gsm8k,csqa,report}")
    options = _eval_options()
    for task in TASKS:
        commands.add_parser(
            task,
            parents=[options],
            help=TASK_HELP[task],
            description=f"Evaluate {TASK_HELP[task]}.",
        )
    report = commands.add_parser(
        "report",
        help="plot accuracy vs thought tokens",
        description="Plot accuracy vs thought "
        "tokens from run folders (thoughts off as its own marker, 95% Wilson error bars).",
    )
    report.add_argument(
        "dirs",
        nargs="+",
        metavar="DIR",
        help="run folders (--out of eval runs; sweep parents are searched)",
    )
    report.add_argument(
        "--out",
        default=None,
        help="PNG path (default DIR/accuracy_vs_thought_tokens.png, first DIR)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        return _report(args) if args.task == "report" else _evaluate(parser, args)
    except EvalError as exc:
        print(f"quietstar eval: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("quietstar eval: interrupted; rerun with the same --out to resume", file=sys.stderr)
        return 130


def _evaluate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from clients.results import markdown_table
    from clients.runner import run_sweep

    try:
        configs = configs_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    print(markdown_table(run_sweep(configs)))
    return 0


def _report(args: argparse.Namespace) -> int:
    from clients.report import default_png, load_summaries, plot_accuracy
    from clients.results import markdown_table

    summaries = load_summaries(args.dirs)
    png = plot_accuracy(summaries, args.out or default_png(args.dirs))
    print(markdown_table(summaries))
    print(f"\nplot: {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
