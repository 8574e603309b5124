"""`--compile on`: the decode step's network through torch.compile (Inductor), attention left to
the engine.

Between its linears, a decoder layer is ~20 small eager ops (RMSNorm in fp32, RoPE, the SiLU
gate, residual adds), each a dispatch and, with several threads, an OpenMP fork and join.
Inductor fuses them into a few generated kernels, one static graph per row count in
`--compile-sizes` (default 1: a single stream's step); steps of other sizes run eagerly, since a
graph dynamic in the row count measured no faster than eager at 8 rows on the development CPU
while a static one was 8-14 % faster. Two things stay opaque custom ops, so that a graph serves
every step of its size:
- attention (`quietstar::decode_attention`): it reads the step's batch description (slots,
  prefix and thought lengths), whose sizes change every step, and writes the KV cache. The op
  calls the step's `DecodeAttention`, set around each call;
- pre-packed linears (`quietstar::packed_linear`, in quietstar.packed).

Compiling happens at engine start (a warm-up step of padding rows, which write only the cache's
scratch slot, per size), so no request waits for it; Inductor caches what it builds, so later
starts are faster. Needs a C++ compiler on CPU.
"""

from __future__ import annotations

import logging
import os
import time
import types
from collections.abc import Callable

import torch

from .attention import DecodeAttention

log = logging.getLogger(__name__)

_STEP_ATTENTION: list[DecodeAttention | None] = [None]  # the running step's, set by `run`


@torch.library.custom_op("quietstar::decode_attention", mutates_args=())
def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: int) -> torch.Tensor:
    """The running step's DecodeAttention for one layer (it also writes that layer's K/V)."""
    attention = _STEP_ATTENTION[0]
    assert attention is not None, "quietstar::decode_attention called outside a compiled step"
    return attention.attend(layer, q, k, v).contiguous()


@decode_attention.register_fake
def _(q, k, v, layer):
    return q.new_empty(q.shape)


class _OpaqueAttention:
    """What the compiled network is traced with: every layer's attention is one custom-op call."""

    def attend(self, layer: int, q, k, v):
        return decode_attention(q, k, v, layer)


Network = Callable[[torch.Tensor, torch.Tensor, object], torch.Tensor]


def _cache_per_cpu_capability() -> None:
    """Inductor's on-disk cache, unless the user placed it, in a folder per CPU capability in
    effect: its keys do not tell a kernel built under ATEN_CPU_CAPABILITY=avx2 from one built for
    AVX-512, and reusing one under the other gave wrong tokens and heap corruption here."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    placed = os.environ.get("TORCHINDUCTOR_CACHE_DIR")  # torch sets its default there too
    if placed and os.path.abspath(placed) != os.path.abspath(default_cache_dir()):
        return

    isa = torch.backends.cpu.get_cpu_capability().lower()
    onednn = os.environ.get("ONEDNN_MAX_CPU_ISA", "").lower()
    name = f"quietstar-{isa}" + (f"-onednn-{onednn}" if onednn else "")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(default_cache_dir(), name)


def _own_code(fn):
    """`fn` with a code object of its own: Dynamo keeps its compiled graphs per code object, so
    each CompiledDecode (each engine in a process) has its own, and `_input_guards_only` cannot
    hand one engine's graph to another."""
    return types.FunctionType(
        fn.__code__.replace(), fn.__globals__, fn.__name__, None, fn.__closure__
    )


def _input_guards_only(guards) -> list[bool]:
    """Keep the guards on the step's inputs (ids, positions: the row count picks the graph) and
    on global state (grad and inference mode); drop the ~4,600 on the network, its modules and
    globals, which cost 1.4 ms a step to check (benchmarks/RESULTS.md). Safe because the engine's
    network is never changed after it is compiled (fused, inference-only) and its graphs are its
    own (`_own_code`)."""
    return [not g.name.startswith(("network", "opaque", "G[", "type(G[")) for g in guards]


class CompiledDecode:
    def __init__(self, network: Network, sizes: tuple[int, ...]):
        """`network(ids, positions, attention)` -> (N, d) hidden states; one static graph per
        row count in `sizes`, other steps run `network` eagerly."""
        _cache_per_cpu_capability()
        self.network, self.sizes = network, frozenset(sizes)
        # one cache entry per size (and per engine, in a process that builds several)
        limit = torch._dynamo.config.recompile_limit
        torch._dynamo.config.recompile_limit = max(limit, 4 * len(self.sizes))
        opaque = _OpaqueAttention()

        def decode(ids, positions):
            return network(ids, positions, opaque)

        self.compiled = torch.compile(
            _own_code(decode),
            dynamic=False,  # a graph dynamic in rows measured no faster than eager at 8 rows
            fullgraph=True,  # any graph break is an error, not a silent slow path
            options={"guard_filter_fn": _input_guards_only},
        )

    def run(self, ids: torch.Tensor, positions: torch.Tensor, attention: DecodeAttention):
        if ids.shape[0] not in self.sizes:
            return self.network(ids, positions, attention)
        _STEP_ATTENTION[0] = attention
        try:
            return self.compiled(ids, positions)
        finally:
            _STEP_ATTENTION[0] = None

    def warm_up(self, steps: list[tuple[torch.Tensor, torch.Tensor, DecodeAttention]]) -> None:
        """Compile now, on padding-only steps (they write only the scratch slot). Call under
        torch.inference_mode(), with the steps' tensors made under it, as the engine's steps are:
        the compiled graphs are guarded on both."""
        start = time.perf_counter()
        try:
            for ids, positions, attention in steps:
                self.run(ids, positions, attention)
        except Exception as e:
            raise RuntimeError(
                f"--compile on: torch.compile failed ({type(e).__name__}: {e}); on CPU it needs "
                "a working C++ compiler (set CXX), or serve with --compile off"
            ) from e
        log.info("decode step compiled in %.1f s", time.perf_counter() - start)
