"""The batching engine: thinking-before-speaking decoding (no FastAPI or pydantic here)."""

from .async_engine import AsyncEngine
from .config import EngineConfig
from .core_client import EngineCoreClient, EngineDeadError
from .engine import Engine
from .outputs import FinishReason, RequestOutput, ScoreOutput, TokenOutput
from .sampling_params import RequestError, SamplingParams, ThoughtParams

__all__ = [
    "AsyncEngine",
    "Engine",
    "EngineConfig",
    "EngineCoreClient",
    "EngineDeadError",
    "FinishReason",
    "RequestError",
    "RequestOutput",
    "SamplingParams",
    "ScoreOutput",
    "ThoughtParams",
    "TokenOutput",
]
