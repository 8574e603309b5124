"""quietstar model core: Llama-family backbone, Quiet-STaR heads, checkpoints (no HTTP, no scheduler)."""

from .checkpoint import load, save
from .config import QuietStarConfig
from .model import END_THOUGHT, START_THOUGHT, QuietStarModel

__all__ = ["END_THOUGHT", "START_THOUGHT", "QuietStarConfig", "QuietStarModel", "load", "save"]
