"""Package layering (house style point 1): each layer imports only the layers below it.

Each check imports a package (and, best effort, its submodules) in a fresh interpreter and
inspects `sys.modules`, so nothing this test session already imported can hide or fake a
violation.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PROBE = r"""
import importlib, json, pkgutil, sys
package = sys.argv[1]
importlib.import_module(package)  # the package itself must import
if sys.argv[2] == "walk":
    for info in pkgutil.walk_packages(sys.modules[package].__path__, package + "."):
        if info.name.rsplit(".", 1)[-1] == "__main__":
            continue  # running a CLI is not importing it
        try:
            importlib.import_module(info.name)
        except Exception:  # noqa: BLE001 - a broken module is another test's failure
            pass
print(json.dumps(sorted(sys.modules)))
"""


def imported_modules(package: str, walk: bool = False) -> set[str]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, package, "walk" if walk else "top"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"importing {package} failed:\n{result.stderr[-3000:]}"
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


def offenders(modules: set[str], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in forbidden)


def test_engine_imports_no_http_stack():
    modules = imported_modules("server.engine", walk=True)
    assert "server.engine.engine" in modules  # the probe really imported the engine
    assert offenders(modules, ("fastapi", "pydantic", "starlette", "uvicorn")) == []
    assert offenders(modules, ("training", "clients")) == []
    assert not any(m.startswith("server.api") for m in modules)


def test_api_process_imports_no_torch():
    """The API process talks to the engine-core process: no torch, no model code."""
    modules = imported_modules("server.api")
    assert "server.engine.core_client" in modules
    assert offenders(modules, ("torch", "quietstar")) == []


def test_clients_import_nothing_from_the_model_server_or_trainer():
    if importlib.util.find_spec("clients") is None or not (ROOT / "clients").is_dir():
        pytest.skip("clients/ does not exist yet")
    modules = imported_modules("clients", walk=True)
    assert offenders(modules, ("quietstar", "server", "training")) == []


def test_training_does_not_import_the_server():
    if not (ROOT / "training").is_dir():
        pytest.skip("training/ does not exist yet")
    modules = imported_modules("training", walk=True)
    assert offenders(modules, ("server", "clients")) == []


def test_plain_serve_imports_no_ray():
    """Without --replicas, `quietstar serve` neither imports nor starts Ray."""
    probe = (
        "import json, sys\n"
        "import server.__main__, server.api.app\n"
        "from server.config import from_args\n"
        "config = from_args(['--model', 'default'])\n"
        "server.api.app.build_app(config)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    modules = set(json.loads(result.stdout.strip().splitlines()[-1]))
    assert "server.api.app" in modules and "server.config" in modules
    assert offenders(modules, ("ray",)) == []
    assert not any(m.startswith("server.replicas") for m in modules)
