"""The messages between the API process and the engine-core process, as msgspec structs.

msgspec encodes them as MessagePack and decodes straight into these typed structs and the
engine's own dataclasses (SamplingParams, RequestOutput, ...): about 20 us for a step's outputs
of 8 requests, no pickle, and a malformed message fails loudly instead of half-decoding.
"""

from __future__ import annotations

import msgspec

from .limits import ModelInfo, RequestLimits
from .outputs import RequestOutput, ScoreOutput
from .sampling_params import SamplingParams, ThoughtParams

# ------------------------------------------------------------------ API process -> core


class AddRequest(msgspec.Struct, tag="add"):
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams


class Abort(msgspec.Struct, tag="abort"):
    request_id: str


class Score(msgspec.Struct, tag="score"):
    call_id: int
    prompt_ids: list[int]
    thoughts: ThoughtParams
    top_logprobs: int
    seed: int | None


class Shutdown(msgspec.Struct, tag="shutdown"):
    """Abort everything, report the aborted requests, exit."""


# ------------------------------------------------------------------ core -> API process


class Ready(msgspec.Struct, tag="ready"):
    model_info: ModelInfo
    limits: RequestLimits
    tokenizer: bytes  # the engine's tokenizer (meta-tokens added), pickled: one trusted peer


class StartFailed(msgspec.Struct, tag="start_failed"):
    error: str


class Outputs(msgspec.Struct, tag="outputs"):
    """One step's outputs (possibly none) and the scheduler's counts after it."""

    outputs: list[RequestOutput]
    num_running: int
    num_waiting: int


class Failed(msgspec.Struct, tag="failed"):
    """A request the core refused (`param` as RequestError's) or lost to an engine error."""

    request_id: str
    error: str
    param: str | None = None
    is_request_error: bool = False


class Scored(msgspec.Struct, tag="scored"):
    call_id: int
    result: ScoreOutput | None = None
    error: str | None = None
    param: str | None = None
    is_request_error: bool = False


ToCore = AddRequest | Abort | Score | Shutdown
FromCore = Ready | StartFailed | Outputs | Failed | Scored

encoder = msgspec.msgpack.Encoder()
to_core = msgspec.msgpack.Decoder(ToCore)
from_core = msgspec.msgpack.Decoder(FromCore)
