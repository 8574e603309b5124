"""The `quietstar` console command: one entry point, one subcommand per package.

Each subcommand owns its argparse parser in its own package (`main(argv)`); this module only
dispatches, importing the package lazily so `quietstar --help` stays fast on any machine.
"""

from __future__ import annotations

import importlib
import sys

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("server.__main__", "run the OpenAI-compatible server"),
    "train": ("training.__main__", "Quiet-STaR continued pretraining"),
    "eval": (
        "clients.__main__",
        "GSM8K / CommonsenseQA against an OpenAI-compatible endpoint; "
        "`eval nll`: held-out NLL with controls, in-process",
    ),
    "bench": ("benchmarks.__main__", "speed benchmarks (engine, serve)"),
    "convert": ("quietstar.convert", "convert a model (or `default`) to a Quiet-STaR checkpoint"),
}

# Subcommands of a subcommand that live in another package (clients/ stays HTTP-only).
NESTED: dict[tuple[str, str], str] = {("eval", "nll"): "training.nll_eval"}


def _usage() -> str:
    lines = ["usage: quietstar {" + ",".join(SUBCOMMANDS) + "} [args...]", "", "subcommands:"]
    lines += [f"  {name:<8} {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    lines += ["", "Run `quietstar SUBCOMMAND --help` for its options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"quietstar: unknown subcommand {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    target = SUBCOMMANDS[name][0]
    if rest and (name, rest[0]) in NESTED:  # `quietstar eval nll` runs in-process, not over HTTP
        target, rest = NESTED[(name, rest[0])], rest[1:]
    module = importlib.import_module(target)
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
