"""ModelRunner: turns scheduled sequences into tensors and runs the Quiet-STaR model.

`prefill` fills new sequences' slots, their prompts packed into one forward; `decode` runs one step over every running sequence (base
rows and thought rows in one batch) and returns their final-norm hidden states. A decode step may
be padded to a bucket of slots with every (slot, column) cell a row: the static shapes a CUDA
graph replays (padding rows write only the cache's scratch slot and are dropped from the output).
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import torch

from quietstar import END_THOUGHT, START_THOUGHT, QuietStarModel
from quietstar.kernels.modules import KernelDecoderLayers

from .attention import DecodeAttention, DecodeBatch, PrefillAttention, cpu_kernel_fits
from .kv_cache import KVCache
from .sequence import Row, Sequence

log = logging.getLogger(__name__)

# Rows one prefill forward takes at most (more prompts: several forwards; a longer prompt alone):
# bounds the activations of a burst of long prompts, as vLLM's max_num_batched_tokens does.
PREFILL_TOKENS = 4096


class Span(NamedTuple):
    """Where one sequence's rows are in a step's output."""

    base: int | None  # row index of its base row, if it fed one
    thoughts: range  # row indices of its thought rows


class DecodeOutput(NamedTuple):
    h: torch.Tensor  # (M, d) final-norm hidden states of the real rows, in sequence order
    spans: list[Span]  # per sequence


class DecodeInput(NamedTuple):
    ids: torch.Tensor  # (N,) token ids or meta sentinels
    positions: torch.Tensor  # (N,)
    batch: DecodeBatch
    real_rows: torch.Tensor | None  # (M,) rows that are not padding, in order; None: all
    spans: list[Span]  # per sequence, indices into the real rows
    lengths: tuple[list[int], list[int]]  # per slot, prefix and thought lengths after the step

    def to(self, device) -> DecodeInput:
        move = lambda x: x.to(device, non_blocking=True)  # noqa: E731
        batch = DecodeBatch(
            **{
                k: move(v) if isinstance(v, torch.Tensor) else v
                for k, v in vars(self.batch).items()
            }
        )
        return self._replace(
            ids=move(self.ids),
            positions=move(self.positions),
            batch=batch,
            real_rows=None if self.real_rows is None else move(self.real_rows),
        )


def prefill_groups(seqs: list[Sequence], max_tokens: int) -> list[list[Sequence]]:
    """Consecutive runs of sequences whose prompts together hold at most `max_tokens` tokens
    (a longer prompt makes a run of its own)."""
    groups: list[list[Sequence]] = []
    size = 0
    for seq in seqs:
        n = len(seq.prompt_ids)
        if not groups or size + n > max_tokens:
            groups.append([])
            size = 0
        groups[-1].append(seq)
        size += n
    return groups


def bucket_sizes(max_num_seqs: int) -> list[int]:
    """Slot counts a padded step is rounded up to: 1, 2, 4, 8, then multiples of 8, and the
    maximum itself."""
    sizes = [b for b in (1, 2, 4) if b < max_num_seqs]
    sizes += list(range(8, max_num_seqs, 8)) + [max_num_seqs]
    return sizes


def bucket_for(num_slots: int, sizes: list[int]) -> int:
    """The smallest bucket that holds `num_slots`."""
    for size in sizes:
        if size >= num_slots:
            return size
    raise ValueError(f"{num_slots} slots exceed the largest bucket {sizes[-1]}")


def prepare_decode(
    seqs: list[Sequence], cache: KVCache, padded_slots: int | None = None
) -> DecodeInput:
    """Batch tensors (on the host) for one decode step over `seqs`, which hold slots 0..n-1,
    from their per-row records. With `padded_slots`, every (slot, column) cell of that many slots
    and 1 + cache.max_num_thoughts columns (1 when nobody thinks) becomes a row."""
    rows, spans = [], []
    for seq in seqs:
        own = seq.decode_rows(cache.lengths[seq.slot])
        base = len(rows) if own and own[0].column == 0 else None
        spans.append(Span(base, range(len(rows) + (base is not None), len(rows) + len(own))))
        rows += own
    prefix_len = [cache.lengths[s.slot] + (s.pending_token is not None) for s in seqs]
    thought_len = [s.thought_step + 1 for s in seqs]  # 0 when not thinking
    lengths = (list(prefix_len), list(thought_len))
    if padded_slots is None:
        base_cols = int(any(r.column == 0 for r in rows))
        R = base_cols + max(r.column for r in rows)
        max_prefix, max_thought = max(prefix_len), max(thought_len)
        real_rows = None
        dense_index = [r.slot * R + r.column - (1 - base_cols) for r in rows]
    else:
        base_cols, R = 1, 1 + (cache.max_num_thoughts if any(thought_len) else 0)
        max_prefix, max_thought = cache.max_len, cache.max_thought_len if R > 1 else 0
        real_rows = torch.tensor([r.slot * R + r.column for r in rows])
        rows = _pad(rows, padded_slots, R, cache.scratch_slot)
        dense_index = list(range(len(rows)))
        extra = padded_slots - len(seqs)
        prefix_len, thought_len = prefix_len + [1] * extra, thought_len + [0] * extra
    # every index tensor from host lists, in one torch.tensor call split into views: a step has
    # a few rows, and indexing a (rows, 5) tensor op by op cost more than the lists
    base = [i for i, r in enumerate(rows) if r.column == 0]
    thought = [i for i, r in enumerate(rows) if r.column != 0]
    (
        ids,
        positions,
        dense,
        base_slots,
        base_pos,
        thought_slots,
        thought_index,
        thought_steps,
        base_rows,
        thought_rows,
        prefix_lens,
        thought_lens,
    ) = _int64_tensors(
        [r.token for r in rows],
        [r.position for r in rows],
        dense_index,
        [rows[i].slot for i in base],
        [rows[i].cache_index for i in base],
        [rows[i].slot for i in thought],
        [rows[i].column - 1 for i in thought],
        [rows[i].cache_index for i in thought],
        base,
        thought,
        prefix_len,
        thought_len,
    )
    batch = DecodeBatch(
        num_slots=len(prefix_len),
        R=R,
        base_cols=base_cols,
        max_prefix=max_prefix,
        max_thought=max_thought,
        dense_index=dense,
        base_rows=base_rows,
        base_slots=base_slots,
        base_pos=base_pos,
        thought_rows=thought_rows,
        thought_slots=thought_slots,
        thought_index=thought_index,
        thought_steps=thought_steps,
        prefix_len=prefix_lens,
        thought_len=thought_lens,
        all_base=len(base) == len(rows),
        full_prefix=all(p == max_prefix for p in prefix_len),
        kernel_rows=_kernel_rows(rows, dense_index, R, prefix_len, thought_len),
    )
    return DecodeInput(ids, positions, batch, real_rows, spans, lengths)


def _int64_tensors(*lists: list[int]) -> tuple[torch.Tensor, ...]:
    """Each list as an int64 tensor: views of one tensor made in a single call."""
    flat = [v for values in lists for v in values]
    return torch.tensor(flat, dtype=torch.int64).split([len(values) for values in lists])


def _kernel_rows(
    rows: list[Row], dense_index: list[int], R: int, prefix_len: list[int], thought_len: list[int]
) -> list[tuple[int, ...]]:
    """Each row as quietstar_cpu::decode_attention reads it (`DecodeBatch.kernel_rows`), from the
    host lists: a few plain tuples cost less than the dozen tensor ops that would index the
    batch's tensors."""
    table = []
    for row, dense in zip(rows, dense_index, strict=True):
        slot, thinks = dense // R, row.column > 0  # thought k = column - 1; a base row's is -1
        length = thought_len[slot] if thinks else 0
        table.append(
            (slot, prefix_len[slot], row.column - 1, length, int(thinks), row.slot, row.cache_index)
        )
    return table


def _pad(rows: list[Row], num_slots: int, R: int, scratch_slot: int) -> list[Row]:
    """Rows in dense (slot, column) order, every empty cell a padding row that writes only the
    scratch slot."""
    grid: list[Row | None] = [None] * (num_slots * R)
    for row in rows:
        grid[row.slot * R + row.column] = row
    return [row or Row(scratch_slot, i % R, 0, 0, 0) for i, row in enumerate(grid)]


class ModelRunner:
    def __init__(
        self,
        model: QuietStarModel,
        cache: KVCache,
        pad: bool,
        cuda_graphs: bool,
        compile_sizes: tuple[int, ...] = (),
    ):
        self.model, self.cache = model, cache
        self.device = model.device
        self.buckets = bucket_sizes(cache.max_seqs)
        self.pad = pad or cuda_graphs
        # quietstar's CPU decode attention, and every layer of a decode step in one call where
        # the model runs on quietstar's kernels too (decided once: neither the cache nor the
        # model changes)
        self.kernel_attention = cpu_kernel_fits(cache.k)
        self.kernel_layers = (
            KernelDecoderLayers.of(model.backbone) if self.kernel_attention else None
        )
        self.graphs = self.compiled = None
        self._rope: tuple[torch.Tensor, torch.Tensor] | None = None  # see _rope_rows
        if compile_sizes:  # row counts to compile the decode network for
            if self.kernel_layers is not None:
                log.warning(
                    "--compile on traces the decode network layer by layer, in place of "
                    "quietstar's fused CPU decode layers, which measured faster for this model "
                    "(benchmarks/RESULTS.md); leave --compile off on this CPU"
                )
            from .compiled import CompiledDecode  # imports torch.compile's machinery: on demand

            self.compiled = CompiledDecode(self._network, compile_sizes)
            with torch.inference_mode():  # as steps run: other tensors or modes recompile
                self.compiled.warm_up([self._padding_step(n) for n in compile_sizes])
        if cuda_graphs:
            from .cuda_graph import DecodeGraphs  # CUDA only: imported when asked for

            self.graphs = DecodeGraphs(self._forward)

    @torch.inference_mode()
    def prefill(self, seqs: list[Sequence]) -> torch.Tensor:
        """Write each prompt's K/V into its sequence's slot, prompts packed into as few forwards
        as PREFILL_TOKENS allows; (S, d) h_base of each prompt's last token."""
        hs = []
        for group in prefill_groups(seqs, PREFILL_TOKENS):
            lengths = [len(seq.prompt_ids) for seq in group]
            ids = torch.tensor([[t for seq in group for t in seq.prompt_ids]])  # (1, N)
            positions = torch.cat([torch.arange(n) for n in lengths])[None]  # (1, N)
            attention = PrefillAttention(self.cache, [seq.slot for seq in group], lengths)
            h = self.model.hidden(ids.to(self.device), positions.to(self.device), attention)
            for seq, n in zip(group, lengths):
                self.cache.record_prefill(seq.slot, n)
            last = torch.tensor(lengths).cumsum(0) - 1
            hs.append(h[0, last.to(self.device)])  # (len(group), d)
        return torch.cat(hs)

    @torch.inference_mode()
    def decode(self, seqs: list[Sequence]) -> DecodeOutput:
        padded = bucket_for(len(seqs), self.buckets) if self.pad else None
        inp = self._inputs(seqs, padded)
        if self.graphs is not None:
            h = self.graphs.run(inp.ids, inp.positions, inp.batch)
        else:
            h = self._forward(inp.ids, inp.positions, inp.batch)
        self.cache.record(*inp.lengths)
        return DecodeOutput(h if inp.real_rows is None else h[inp.real_rows], inp.spans)

    def _inputs(self, seqs: list[Sequence], padded_slots: int | None) -> DecodeInput:
        """`prepare_decode` on the host, then moved to the model's device."""
        inp = prepare_decode(seqs, self.cache, padded_slots)
        return inp if self.device.type == "cpu" else inp.to(self.device)

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor, batch: DecodeBatch):
        """(N,) ids and positions -> (N, d) hidden states; no host synchronisation, so that it
        can be captured."""
        attention = DecodeAttention(self.cache, batch, self.kernel_attention)
        if self.compiled is not None:
            return self.compiled.run(ids, positions, attention)
        return self._network(ids, positions, attention)

    def _network(self, ids: torch.Tensor, positions: torch.Tensor, attention) -> torch.Tensor:
        if self.device.type == "cpu" and self.compiled is None:  # eager on the host: a check
            x = self.model.embed(ids)  # skips the meta vectors on steps that feed none (most)
        else:  # no host synchronisation: on a device, captured or traced, the same ops each step
            x = self.model.backbone.embed_tokens(ids.clamp(min=0))
            for which in (START_THOUGHT, END_THOUGHT):
                x = torch.where((ids == which)[:, None], self.model.meta_vector(which), x)
        backbone = self.model.backbone
        if self.kernel_layers is not None and self.kernel_layers.serves(x):
            cos, sin = self._rope_rows(positions, x.dtype)
            layers = self.kernel_layers(x, cos, sin, *attention.kernel_caches())
            return backbone.norm(layers)
        return backbone(x[None], positions[None], attention)[0]

    def _rope_rows(self, positions: torch.Tensor, dtype: torch.dtype):
        """The rotary tables (1, N, D) of a step's positions, read from tables of every position
        a decode row can take (a prefix position plus a thought step), made once per dtype:
        eight ops a step become two reads. The tables are made by the model's own rotary, in
        blocks small enough for each op to run its vector loop on one thread, as the step's
        call would: the values are the same, bit for bit."""
        if self._rope is None or self._rope[0].dtype != dtype:
            rotary, block = self.model.backbone.rotary, 256
            n = self.cache.max_len + self.cache.max_thought_len + 2
            device = rotary.inv_freq.device
            parts = [
                rotary(torch.arange(a, min(a + block, n), device=device)[None], dtype)
                for a in range(0, n, block)
            ]
            self._rope = tuple(torch.cat(tables, dim=1) for tables in zip(*parts, strict=True))
        cos, sin = self._rope
        return cos[:, positions], sin[:, positions]

    def _padding_step(self, num_slots: int) -> tuple[torch.Tensor, torch.Tensor, DecodeAttention]:
        """A step of `num_slots` padding rows (they write only the scratch slot): for warming
        up."""
        inp = self._inputs([], num_slots)
        return inp.ids, inp.positions, DecodeAttention(self.cache, inp.batch, self.kernel_attention)
