"""The batching engine: thinking-before-speaking decoding (no FastAPI or pydantic here)."""

from .async_engine import AsyncEngine
from .config import EngineConfig
from .engine import Engine
from .outputs import FinishReason, RequestOutput, ScoreOutput, TokenOutput
from .sampling_params import SamplingParams, ThoughtParams

__all__ = [
    "AsyncEngine", "Engine", "EngineConfig", "FinishReason", "RequestOutput", "SamplingParams",
    "ScoreOutput", "ThoughtParams", "TokenOutput",
]
