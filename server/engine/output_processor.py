"""The output processor: turns the engine's token ids into streamed text, in the API process.

The engine emits token ids (with log-probs, thought ids and mixing weights); here each choice is
detokenized incrementally and stop strings are applied, so that no stop string, nor a prefix of
one, ever reaches a client. A choice that hits a stop string finishes here with reason "stop";
the caller then aborts the request in the engine (vLLM V1 splits the work the same way).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from .outputs import FinishReason, RequestOutput
from .sampling_params import SamplingParams


class Detokenizer:
    """One choice's incremental detokenization with stop strings that never leak."""

    def __init__(self, tokenizer, stop: tuple[str, ...]):
        self.tokenizer, self.stop = tokenizer, stop
        self.output_ids: list[int] = []
        self.text = ""  # visible text emitted so far

    def append(self, token_id: int) -> tuple[str, bool]:
        """Text the token adds, and whether a stop string was hit (the text ends before it)."""
        self.output_ids.append(token_id)
        full = self.tokenizer.decode(self.output_ids, skip_special_tokens=True)
        hits = [full.find(s, max(0, len(self.text) - len(s) + 1)) for s in self.stop]
        hits = [at for at in hits if at != -1]
        if hits:  # the earliest occurrence wins, whatever the list order
            return self._emit(full[: min(hits)]), True
        if full.endswith("\ufffd"):  # incomplete UTF-8 sequence: wait for the next token
            return "", False
        keep = max((_overlap(full, s) for s in self.stop), default=0)
        return self._emit(full[: len(full) - keep]), False

    def flush(self) -> str:
        """At a finish other than a stop string, the text held back for a possible one."""
        return self._emit(self.tokenizer.decode(self.output_ids, skip_special_tokens=True))

    def _emit(self, text: str) -> str:
        delta = text[len(self.text) :] if text.startswith(self.text) else ""
        self.text += delta
        return delta


def _overlap(text: str, stop: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `stop`."""
    for n in range(min(len(stop) - 1, len(text)), 0, -1):
        if text.endswith(stop[:n]):
            return n
    return 0


class RequestText:
    """One request's choices as text: fills `TokenOutput.text` and applies stop strings."""

    def __init__(self, tokenizer, params: SamplingParams):
        self.choices = [Detokenizer(tokenizer, params.stop) for _ in range(params.n)]
        self.finished = [False] * params.n
        self.is_cut = False  # a choice ended on a stop string; the engine may still run it

    @property
    def is_finished(self) -> bool:
        return all(self.finished)

    @property
    def needs_abort(self) -> bool:
        """The engine may still be running this request: tell it to stop."""
        return self.is_cut or not self.is_finished

    def process(self, out: RequestOutput) -> RequestOutput | None:
        """The output with text filled in, cut at a stop string; None once its choice ended."""
        if self.finished[out.index]:
            return None  # generated after a stop string, before the engine saw the abort
        detok = self.choices[out.index]
        for i, token in enumerate(out.tokens):
            token.text, hit = detok.append(token.token_id)
            if hit:
                out.num_visible_tokens -= len(out.tokens) - i - 1
                out.tokens = out.tokens[: i + 1]
                out.finished, out.finish_reason = True, FinishReason.STOP
                self.is_cut = True
                break
        else:
            if out.finished and out.finish_reason != FinishReason.ABORT and out.tokens:
                out.tokens[-1].text += detok.flush()
        self.finished[out.index] = out.finished
        return out

    async def follow(self, stream: asyncio.Queue) -> AsyncIterator[RequestOutput]:
        """Processed outputs from an engine stream (exceptions in it are raised) until every
        choice has finished."""
        while not self.is_finished:
            item = await stream.get()
            if isinstance(item, BaseException):
                raise item
            out = self.process(item)
            if out is not None:
                yield out
