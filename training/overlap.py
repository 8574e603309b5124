"""Does a held-out set overlap what the heads were trained on?

A checkpoint's provenance (training/heads.py) names its data by content hash, text template,
document cap and held-out split (seed, fraction). Given the same file, the training documents
are rebuilt exactly and intersected with the evaluated documents. A record that cannot be
checked (another file, a hub dataset, an old provenance without a split) gives a warning.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .data import make_extractor, read_documents, split_documents
from .heads import docs_sha256, file_sha256


class OverlapError(ValueError):
    """The held-out documents include documents the heads were trained on."""


def provenance_chain(provenance: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The checkpoint's own record, then what its starting heads/backbone were trained on."""
    while provenance:
        yield provenance
        provenance = provenance.get("base_provenance") or {}


def training_documents(record: dict[str, Any], path: Path) -> list[str]:
    """The documents a provenance record trained on, rebuilt from `path` (same content)."""
    field = record["text_field"]  # a template if it has fields, else a field name
    extract = make_extractor("text", field) if "{" in field else make_extractor(field, "")
    docs = read_documents(str(path), extract, record["data"].get("max_docs", 0))
    held = record.get("held_out", {})
    if held.get("kind") == "fraction":
        docs, _ = split_documents(docs, held["fraction"], held["seed"])
    if "train_docs_sha256" in record and docs_sha256(docs) != record["train_docs_sha256"]:
        raise ValueError(f"{path}: rebuilt training documents do not match the provenance hash")
    return docs


def check_overlap(
    provenance: dict[str, Any], files: list[str | Path], held_docs: list[str]
) -> tuple[int, list[str]]:
    """-> (number of held-out documents some record trained on, warnings for unchecked records).

    `files`: local data files that may be a record's training data (matched by content hash)."""
    hashes = {file_sha256(p): Path(p) for p in files if Path(p).is_file()}
    held = set(held_docs)
    overlapping: set[str] = set()
    warnings = []
    for depth, record in enumerate(provenance_chain(provenance)):
        who = "the heads" if depth == 0 else f"the starting model (level {depth})"
        data = record.get("data")
        if not isinstance(data, dict) or "held_out" not in record:
            warnings.append(
                f"{who}: provenance does not record the data by hash and the held-out split; "
                "overlap with the evaluated text cannot be checked"
            )
            continue
        path = hashes.get(data.get("sha256"))
        if path is None:
            warnings.append(
                f"{who}: trained on {data.get('name')!r} (sha256 {str(data.get('sha256'))[:12]}), "
                "which is not among the given files; overlap cannot be checked"
            )
            continue
        overlapping |= held & set(training_documents(record, path))
    return len(overlapping), warnings
