"""`quietstar convert`: turn `default`, a Hugging Face Llama-family folder, a GGUF file, the
release layout or one of our checkpoints into a full Quiet-STaR checkpoint (`quietstar.save`).

Heads are carried over when the source has them, fresh otherwise (w == 0, spec §2.2).
`quietstar convert default` with no OUT only prepares the cached default model.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

DTYPES = {"bf16": "bfloat16", "fp32": "float32"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quietstar convert",
        description="Convert a model to a Quiet-STaR checkpoint (backbone + meta vectors + "
        "mixing head), or prepare the embedded default model.",
    )
    io = parser.add_argument_group("source and output")
    io.add_argument(
        "src",
        metavar="SRC",
        help="`default` (the embedded SmolLM2-135M-Instruct), a local Hugging Face "
        "Llama-family folder (Llama 2/3, Mistral, Qwen2, SmolLM2), the quietstar-8-ahead "
        "release layout, one of our checkpoints, or a .gguf file",
    )
    io.add_argument(
        "out",
        metavar="OUT",
        nargs="?",
        help="folder to write the checkpoint to (replaced atomically if it exists); may be "
        "omitted only for SRC=default, which then just prepares and prints the cached folder",
    )
    io.add_argument(
        "--gguf",
        action="store_true",
        help="SRC is a GGUF file: dequantize it to a bf16 Hugging Face folder first "
        "(implied by a .gguf suffix)",
    )
    out = parser.add_argument_group("output format")
    out.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        default="bf16",
        help="dtype of the written backbone weights; the Quiet-STaR tensors stay fp32 "
        "(default: %(default)s)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.out is None and args.src != "default":
        parser.error("OUT is required unless SRC is `default`")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.perf_counter()
    try:
        if args.out is None:
            from .default_model import default_model_dir

            print(f"default model ready: {default_model_dir()}")
        else:
            out = convert(args.src, Path(args.out), args.dtype, args.gguf)
            print(f"wrote {out}")
    except (ValueError, RuntimeError, OSError) as e:
        print(f"quietstar convert: error: {e}", file=sys.stderr)
        return 1
    print(f"took {time.perf_counter() - start:.1f} s")
    return 0


def convert(src: str, out: Path, dtype: str = "bf16", gguf: bool = False) -> Path:
    """Load `src` (see the SRC help) and save it as a Quiet-STaR checkpoint at `out`."""
    if gguf or src.endswith(".gguf"):
        with tempfile.TemporaryDirectory(prefix="quietstar-gguf-") as tmp:
            from .default_model import convert_gguf

            path = Path(src).expanduser()
            if not path.is_file():
                raise ValueError(f"{path}: no such GGUF file")
            return _convert_folder(convert_gguf(path, Path(tmp) / "hf"), out, dtype)
    return _convert_folder(src, out, dtype)


def _convert_folder(src: str | Path, out: Path, dtype: str) -> Path:
    import torch

    from .checkpoint import load, save

    torch_dtype = getattr(torch, DTYPES[dtype])
    model = load(src, dtype=torch_dtype)
    model.backbone.config.dtype = DTYPES[dtype]  # config.json says what the file holds
    trained = "trained" if model.config.heads_trained else "untrained"
    logging.getLogger(__name__).info("%s -> %s (%s, %s heads)", model.source, out, dtype, trained)
    return save(model, out)
