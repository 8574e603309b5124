"""The shared helpers of tests/conftest.py for the model-core tests, loaded by path under a
private name: with several conftest.py files in the tree, `from conftest import ...` can resolve
to another folder's conftest."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_NAME = "_quietstar_core_tests_root_conftest"
if _NAME not in sys.modules:
    _spec = importlib.util.spec_from_file_location(_NAME, Path(__file__).parents[1] / "conftest.py")
    _module = importlib.util.module_from_spec(_spec)
    sys.modules[_NAME] = _module
    _spec.loader.exec_module(_module)
_root = sys.modules[_NAME]

TINY = _root.TINY
byte_tokenizer = _root.byte_tokenizer
make_hf_checkpoint = _root.make_hf_checkpoint
randomize_heads = _root.randomize_heads
