"""Run metrics: one JSON object per line in OUT/metrics.jsonl (kind "train" or "eval"), and
optionally TensorBoard events (imported lazily; skipped with a clear message if not installed).
Only the main process writes.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Records of a metrics.jsonl file, or of RUN_DIR/metrics.jsonl."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    with path.open() as f:
        return [json.loads(line) for line in f if line.strip()]


class MetricsLog:
    def __init__(self, out: Path, tensorboard: bool = False, resume_step: int | None = None):
        self.path = out / METRICS_FILE
        out.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.is_file():
            self._truncate_after(resume_step)
        elif resume_step is None and self.path.is_file():
            self.path.unlink()  # a fresh run owns the file
        self.writer = _tensorboard_writer(out / "tensorboard") if tensorboard else None

    def _truncate_after(self, step: int) -> None:
        """A resumed run re-logs the steps after its checkpoint: drop the stale ones."""
        kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            prefix = record.get("kind", "train")
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step" and math.isfinite(value):
                    self.writer.add_scalar(f"{prefix}/{key}", value, record["step"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _tensorboard_writer(directory: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.warning(
            "--tensorboard: the `tensorboard` package is not installed (pip install "
            "tensorboard); continuing with metrics.jsonl only"
        )
        return None
    return SummaryWriter(str(directory))
