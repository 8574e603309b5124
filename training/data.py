"""Training data: documents from local files or the datasets hub -> fixed-length token windows.

spec §3.1: every document becomes exactly `seq_len` tokens, a uniformly random window if it is
longer, else right-padded (a key mask marks the real tokens). Windows are chosen once with a
seeded `random.Random`; the order is a seeded permutation per epoch, so a data position is just
"samples consumed" and a resumed run sees the same batches. Documents are read and validated
before any model is loaded, so bad data fails fast with the file (and line) named.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch.utils.data import Dataset, Sampler

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

LOCAL_SUFFIXES = (".jsonl", ".json", ".txt", ".parquet")
Extractor = Callable[[Any, str], str]


class DataError(ValueError):
    """Unusable training data; the message names the source (and line)."""


class Windows(NamedTuple):
    ids: torch.Tensor  # (N, L) long, right-padded
    mask: torch.Tensor  # (N, L) bool, True = real token


# ---------------------------------------------------------------- reading documents


def make_extractor(text_field: str, text_template: str) -> Extractor:
    """record -> text, by field name or by a str.format template over the record's fields."""
    template = text_template.replace("\\n", "\n").replace("\\t", "\t")

    def extract(record: Any, where: str) -> str:
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
        if template:
            try:
                return template.format_map(record)
            except (KeyError, IndexError, ValueError) as e:
                raise DataError(f"{where}: --text-template {text_template!r} failed: {e!r}") from e
        if text_field not in record:
            raise DataError(
                f"{where}: no field {text_field!r} (fields: {sorted(record)}); "
                "set --text-field or --text-template"
            )
        text = record[text_field]
        if not isinstance(text, str):
            raise DataError(f"{where}: field {text_field!r} is {type(text).__name__}, not text")
        return text

    return extract


def read_documents(
    source: str,
    extract: Extractor,
    max_docs: int = 0,
    hub_config: str = "",
    hub_split: str = "train",
) -> list[str]:
    """Non-empty documents from a local file or a hub dataset (the first `max_docs`; 0 = all)."""
    path = Path(source).expanduser()
    if path.exists() or path.suffix in LOCAL_SUFFIXES:
        texts, name = _read_local(path, extract), str(path)
    else:
        texts, name = _read_hub(source, hub_config, hub_split, extract), source
    docs = []
    for text in texts:
        if text.strip():
            docs.append(text)
            if max_docs and len(docs) >= max_docs:
                break
    if not docs:
        raise DataError(f"{name}: no usable documents (all records are empty)")
    log.info("read %d documents from %s", len(docs), name)
    return docs


def _read_local(path: Path, extract: Extractor) -> Iterator[str]:
    if path.is_dir():
        raise DataError(f"{path}: is a directory; pass one data file")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.suffix not in LOCAL_SUFFIXES:
        raise DataError(f"{path}: unsupported file type (use {', '.join(LOCAL_SUFFIXES)})")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")
    reader = {".jsonl": _jsonl, ".json": _json, ".txt": _txt, ".parquet": _parquet}[path.suffix]
    return _reraise_os_errors(path, reader(path, extract))


def _reraise_os_errors(path: Path, texts: Iterator[str]) -> Iterator[str]:
    try:
        yield from texts
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: unreadable: {e}") from e


def _jsonl(path: Path, extract: Extractor) -> Iterator[str]:
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: invalid JSON: {e.msg}") from e
            yield extract(record, where)


def _json(path: Path, extract: Extractor) -> Iterator[str]:
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from e
    if not isinstance(records, list):
        raise DataError(f"{path}: expected a JSON array of records")
    for i, record in enumerate(records):
        yield record if isinstance(record, str) else extract(record, f"{path}: record {i}")


def _txt(path: Path, extract: Extractor) -> Iterator[str]:
    """Documents are separated by blank lines."""
    yield from path.read_text(encoding="utf-8").split("\n\n")


def _parquet(path: Path, extract: Extractor) -> Iterator[str]:
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for bad files
        raise DataError(f"{path}: unreadable parquet file: {e}") from e
    for batch in table.iter_batches():
        for i, record in enumerate(batch.to_pylist()):
            yield extract(record, f"{path}: row {i}")


def _read_hub(name: str, config: str, split: str, extract: Extractor) -> Iterator[str]:
    try:
        import datasets

        stream = datasets.load_dataset(name, config or None, split=split, streaming=True)
        records = iter(stream)
        first = next(records)
    except StopIteration:
        return
    except Exception as e:  # noqa: BLE001 - offline, unknown name, bad config ...
        raise DataError(
            f"{name}: not a local file and cannot load it from the datasets hub: "
            f"{type(e).__name__}: {e}"
        ) from e
    yield extract(first, f"{name} [{split}] record 0")
    for i, record in enumerate(records, 1):
        yield extract(record, f"{name} [{split}] record {i}")


def split_documents(docs: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Deterministic held-out split: (train, eval)."""
    if fraction <= 0:
        return docs, []
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(fraction * len(docs)))
    if n_eval >= len(docs):
        raise DataError(f"eval fraction {fraction} leaves no training documents ({len(docs)})")
    held = set(order[:n_eval])
    return [d for i, d in enumerate(docs) if i not in held], [docs[i] for i in sorted(held)]


# ---------------------------------------------------------------- windows


def make_windows(
    docs: Iterable[str], tokenizer: PreTrainedTokenizerBase, seq_len: int, seed: int
) -> Windows:
    """spec §3.1: a random seq_len window per document (seeded), or right-padding."""
    rng = random.Random(seed)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    encoded = tokenizer(list(docs), add_special_tokens=True)["input_ids"]
    rows, masks = [], []
    for tokens in encoded:
        if len(tokens) < 2:  # nothing to predict
            continue
        start = rng.randrange(len(tokens) - seq_len + 1) if len(tokens) > seq_len else 0
        window = tokens[start : start + seq_len]
        rows.append(window + [pad_id] * (seq_len - len(window)))
        masks.append([True] * len(window) + [False] * (seq_len - len(window)))
    if not rows:
        raise DataError("no usable documents: every document tokenizes to fewer than 2 tokens")
    return Windows(torch.tensor(rows, dtype=torch.long), torch.tensor(masks, dtype=torch.bool))


class WindowDataset(Dataset):
    def __init__(self, windows: Windows):
        self.windows = windows

    def __len__(self) -> int:
        return self.windows.ids.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"ids": self.windows.ids[index], "mask": self.windows.mask[index]}


class WindowSampler(Sampler[int]):
    """Positions [start, stop) of an endless stream: epoch e is randperm(n) seeded by seed + e."""

    def __init__(self, n: int, seed: int, start: int, stop: int):
        self.n, self.seed, self.start, self.stop = n, seed, start, max(start, stop)

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self) -> Iterator[int]:
        epoch, offset = divmod(self.start, self.n)
        pos = self.start
        while pos < self.stop:
            perm = torch.randperm(
                self.n, generator=torch.Generator().manual_seed(self.seed + epoch)
            )
            yield from perm[offset:].tolist()[: self.stop - pos]
            pos += min(self.n - offset, self.stop - pos)
            epoch, offset = epoch + 1, 0


def make_dataloader(
    windows: Windows, batch_size: int, seed: int, start_sample: int, num_steps: int
) -> torch.utils.data.DataLoader:
    """Global batches of `batch_size` windows for steps after `start_sample` samples."""
    sampler = WindowSampler(
        len(windows.ids), seed, start_sample, start_sample + num_steps * batch_size
    )
    return torch.utils.data.DataLoader(
        WindowDataset(windows), batch_size=batch_size, sampler=sampler, drop_last=True
    )
