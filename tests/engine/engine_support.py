"""Helpers for the engine tests: tiny checkpoints (written once per test process), engines built
on an already-loaded model, a synchronous driver, and NaN-safe comparisons.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import math
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

import quietstar
from server.engine import Engine, EngineConfig, FinishReason, TokenOutput
from tests.support import DEVICE, make_hf_checkpoint, randomize_heads  # noqa: F401  (re-exported)

_TMP = Path(tempfile.mkdtemp(prefix="quietstar-engine-tests-"))
atexit.register(shutil.rmtree, _TMP, True)


@contextlib.contextmanager
def torch_threads(n: int):
    """Run with `n` intra-op threads, then restore. The tiny model's ops take microseconds, and
    on a shared 2-core machine every OpenMP barrier can wait ~10 ms for a busy core: one thread
    is 50x faster there (and no slower on an idle machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@functools.cache
def tiny_dir(family: str = "llama") -> Path:
    """A tiny random checkpoint of `family`, written once per test process."""
    return make_hf_checkpoint(_TMP / family, family)


def tiny_model(family: str = "llama", heads_seed: int | None = None) -> quietstar.QuietStarModel:
    """A fresh fp32 copy on `DEVICE` (w == 0), or with a random non-zero mixing head when
    `heads_seed` is set."""
    model = quietstar.load(tiny_dir(family), dtype=torch.float32, device=DEVICE)
    if heads_seed is not None:
        randomize_heads(model, seed=heads_seed)
    return model


def make_engine(model: quietstar.QuietStarModel, **overrides) -> Engine:
    settings = dict(
        model="test",
        dtype="float32",
        device=str(model.device),
        max_model_len=256,
        max_num_seqs=4,
        max_thought_tokens=8,
        max_num_thoughts=4,
    )
    settings.update(overrides)
    return Engine(EngineConfig(**settings), model=model)


def prompt_ids(length: int, seed: int, low: int = 3, high: int = 259) -> list[int]:
    """Random byte-tokenizer ids (specials and meta-tokens excluded)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(low, high, (length,), generator=g).tolist()


@dataclass
class Choice:
    """Everything one choice (request id, index) streamed, accumulated."""

    tokens: list[TokenOutput] = field(default_factory=list)
    finished: bool = False
    finish_reason: FinishReason | None = None
    num_outputs_after_finish: int = 0

    @property
    def token_ids(self) -> list[int]:
        return [t.token_id for t in self.tokens]

    @property
    def thoughts(self) -> list[list[list[int]] | None]:
        return [t.thought_ids for t in self.tokens]

    @property
    def text(self) -> str:
        return "".join(t.text for t in self.tokens)


def collect(results: dict[tuple[str, int], Choice], outputs) -> None:
    for out in outputs:
        choice = results.setdefault((out.request_id, out.index), Choice())
        if choice.finished:
            choice.num_outputs_after_finish += 1
        choice.tokens.extend(out.tokens)
        if out.finished:
            choice.finished, choice.finish_reason = True, out.finish_reason


def run_to_completion(
    engine: Engine, results: dict | None = None, max_steps: int = 10_000, check: bool = True
) -> dict[tuple[str, int], Choice]:
    """Step until nothing is unfinished, checking the engine's bookkeeping after every step."""
    results = {} if results is None else results
    for _ in range(max_steps):
        if not engine.has_unfinished():
            break
        collect(results, engine.step())
        if check:
            engine.check_integrity()
    else:
        raise AssertionError(f"engine still busy after {max_steps} steps")
    return results


def run_steps(engine: Engine, steps: int, results: dict) -> None:
    for _ in range(steps):
        collect(results, engine.step())
        engine.check_integrity()


def assert_close(actual: float | None, expected: float, atol: float = 1e-4, what: str = "") -> None:
    """|actual - expected| <= atol, where NaN, None and disagreeing infinities all fail."""
    assert actual is not None, f"{what}: no value"
    a, e = float(actual), float(expected)
    assert not math.isnan(a) and not math.isnan(e), f"{what}: NaN ({a}, {e})"
    if math.isinf(a) or math.isinf(e):
        assert a == e, f"{what}: {a} != {e}"
        return
    assert abs(a - e) <= atol, f"{what}: {a} vs {e} (diff {abs(a - e):.3g} > {atol:g})"


def finite_max_abs_diff(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Max |actual - expected| over the finite entries; the -inf masks must coincide and any NaN
    fails (reduced with torch, never Python's max, which would swallow a NaN)."""
    a, e = actual.detach().float().cpu(), expected.detach().float().cpu()
    assert a.shape == e.shape, f"shape {tuple(a.shape)} != {tuple(e.shape)}"
    assert not bool(torch.isnan(a).any()), f"actual has {int(torch.isnan(a).sum())} NaN"
    assert not bool(torch.isnan(e).any()), f"expected has {int(torch.isnan(e).sum())} NaN"
    assert not bool(torch.isposinf(a).any() or torch.isposinf(e).any()), "+inf entries"
    assert torch.equal(torch.isneginf(a), torch.isneginf(e)), "-inf masks differ"
    finite = torch.isfinite(a)
    return float((a[finite] - e[finite]).abs().max()) if bool(finite.any()) else 0.0


def assert_tensors_close(actual: torch.Tensor, expected: torch.Tensor, atol: float = 1e-4) -> None:
    diff = finite_max_abs_diff(actual, expected)
    assert diff <= atol, f"max abs diff {diff:.3g} > {atol:g}"
