"""QuietStarConfig: the Quiet-STaR settings a checkpoint carries beside its backbone config.

Defaults are those of the released `ezelikman/quietstar-8-ahead` model and the paper's training
script (spec §1–§3, §5.2): n_ahead 8, embedding scale 100, meta-token strings, mixing-head MLP.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

CONFIG_FILE = "quietstar_config.json"
TENSORS_FILE = "quietstar.safetensors"


@dataclass(frozen=True)
class QuietStarConfig:
    n_ahead: int = field(
        default=8,
        metadata={
            "help": "spec §3.3 accounting: a thought is <start> + (n_ahead - 3) sampled tokens + "
            "<end>; the release was trained with 8 (5 sampled thought tokens)"
        },
    )
    n_ahead_talk: int = field(
        default=4, metadata={"help": "teacher-forced future tokens of the non-myopic loss"}
    )
    start_thought_token: str = field(
        default="<|startthought|>", metadata={"help": "start meta-token string"}
    )
    end_thought_token: str = field(
        default="<|endthought|>", metadata={"help": "end meta-token string"}
    )
    embedding_scale: float = field(
        default=100.0,
        metadata={"help": "meta vectors are stored divided by this (spec §1.2: 100x gradient)"},
    )
    mixing_head_hidden: int = field(
        default=0, metadata={"help": "hidden width of the mixing-head MLP (0: the model width)"}
    )
    heads_trained: bool = field(
        default=False,
        metadata={"help": "whether the meta vectors and mixing head carry trained values"},
    )
    provenance: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "what the Quiet-STaR tensors were trained on"}
    )

    def __post_init__(self):
        if self.n_ahead < 3:
            raise ValueError(
                f"n_ahead must be >= 3 (start + end + base position), got {self.n_ahead}"
            )
        if self.n_ahead_talk < 1:
            raise ValueError(f"n_ahead_talk must be >= 1, got {self.n_ahead_talk}")
        if self.embedding_scale <= 0:
            raise ValueError(f"embedding_scale must be > 0, got {self.embedding_scale}")
        if self.mixing_head_hidden < 0:
            raise ValueError(f"mixing_head_hidden must be >= 0, got {self.mixing_head_hidden}")

    @property
    def thought_tokens(self) -> int:
        """Sampled thought tokens per position (markers not counted)."""
        return self.n_ahead - 3

    @property
    def trained_thought_tokens(self) -> list[int]:
        """Thought lengths the heads were trained at ([] for fresh heads); others are
        off-distribution (training/RESULTS.md measures how they fare)."""
        return [self.thought_tokens] if self.heads_trained else []

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, directory: Path) -> None:
        (Path(directory) / CONFIG_FILE).write_text(json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> QuietStarConfig:
        path = Path(directory) / CONFIG_FILE
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: cannot read Quiet-STaR config: {e}") from e
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path}: unknown keys {unknown}")
        try:
            return cls(**data)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: {e}") from e
