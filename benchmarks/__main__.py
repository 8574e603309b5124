"""`quietstar bench {engine,serve}`: dispatch to the benchmark scripts."""

from __future__ import annotations

import importlib
import sys

BENCHES = {
    "engine": (
        "benchmarks.offline_throughput",
        "engine speed in one process against the honest baselines",
    ),
    "dtypes": (
        "benchmarks.dtype_table",
        "bf16 vs fp32 on this machine for each kind of work (what --dtype auto picks)",
    ),
    "serve": (
        "benchmarks.online_serving",
        "async HTTP load generator against any OpenAI-compatible endpoint",
    ),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in BENCHES:
        print("usage: quietstar bench {engine,dtypes,serve} [--help]\n")
        for name, (_, help_) in BENCHES.items():
            print(f"  {name:<7} {help_}")
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    return int(importlib.import_module(BENCHES[argv[0]][0]).main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
