"""The batching engine: thinking-before-speaking decoding (no FastAPI or pydantic here).

`Engine` and `AsyncEngine` (which need torch and the model code) are imported on first use, so
the API process, which talks to the engine-core process, never imports torch.
"""

from .config import EngineConfig
from .core_client import EngineCoreClient, EngineDeadError
from .limits import ModelInfo, RequestLimits
from .outputs import FinishReason, RequestOutput, ScoreOutput, TokenOutput
from .sampling_params import RequestError, SamplingParams, ThoughtParams

__all__ = [
    "AsyncEngine",
    "Engine",
    "EngineConfig",
    "EngineCoreClient",
    "EngineDeadError",
    "FinishReason",
    "ModelInfo",
    "RequestError",
    "RequestLimits",
    "RequestOutput",
    "SamplingParams",
    "ScoreOutput",
    "ThoughtParams",
    "TokenOutput",
]


def __getattr__(name: str):
    if name == "Engine":
        from .engine import Engine

        return Engine
    if name == "AsyncEngine":
        from .async_engine import AsyncEngine

        return AsyncEngine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
