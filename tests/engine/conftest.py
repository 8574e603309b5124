"""Engine tests run torch on one thread (tiny models; on a busy 2-core machine every OpenMP
barrier can wait for a core), restored after each module."""

from __future__ import annotations

import pytest

from tests.engine.engine_support import torch_threads


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    with torch_threads(1):
        yield
