"""`quietstar train ...` / `python -m training ...` / `accelerate launch -m training ...`.

Parses TrainConfig from the command line, runs training, prints where the checkpoint went.
Exit codes: 0 done, 2 bad arguments or data (reported before any model loading).
"""

from __future__ import annotations

import logging
import sys


def _configure_logging(is_main: bool) -> None:
    # Only the main process logs INFO (nanochat's log0); the others warn only.
    logging.basicConfig(
        level=logging.INFO if is_main else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def main(argv: list[str] | None = None) -> int:
    from .config import parse_config

    cfg = parse_config(list(sys.argv[1:] if argv is None else argv))
    import torch  # heavy imports after argument parsing
    from accelerate import PartialState

    from .trainer import train

    # cpu=True without CUDA: under a launcher (LOCAL_RANK set) that is accelerate's MULTI_CPU (gloo).
    is_main = PartialState(cpu=not torch.cuda.is_available()).is_main_process
    _configure_logging(is_main)

    try:
        final = train(cfg)
    except ValueError as e:  # DataError included: bad data, bad model folder, bad resume path
        print(f"quietstar train: error: {e}", file=sys.stderr)
        return 2
    if is_main:
        print(f"final checkpoint: {final}  (serve it: quietstar serve --model {final})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
