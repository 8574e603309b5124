"""The output processor: turns the engine's token ids into streamed text, in the API process.

The engine emits token ids (with log-probs, thought ids and mixing weights); here each choice is
detokenized incrementally (a few tokens decoded per token, never the whole output) and stop
strings are applied, so that no stop string, nor a prefix of
one, ever reaches a client. A choice that hits a stop string finishes here with reason "stop";
the caller then aborts the request in the engine (vLLM V1 splits the work the same way).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from .outputs import FinishReason, RequestOutput
from .sampling_params import SamplingParams


class IncrementalDecoder:
    """The text of a growing list of token ids, decoding a window of a few tokens per token
    instead of the whole output (vLLM's prefix/read offsets): the new text is
    decode(ids[prefix:]) minus decode(ids[prefix:read]), where `prefix` starts where earlier text
    ended on a whole character. Both decodes see the same first token, so tokenizers that treat a
    leading token specially (SentencePiece's space) agree with a full decode.

    Equal to `decode(ids, skip_special_tokens=True)` for tokenizers whose decode of a
    concatenation is the concatenation of decodes at whole-character boundaries (byte-level BPE;
    not with clean_up_tokenization_spaces, which no streaming decoder can match);
    tests/engine/test_detokenizer.py checks it on random id sequences."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = self.read = 0  # ids[prefix:read]: the window's already-decoded part

    def append(self, token_id: int) -> str:
        """The text the id completes: "" while it ends inside a multi-byte UTF-8 character."""
        self.ids.append(token_id)
        return self._advance(final=False)

    def flush(self) -> str:
        """At the end: whatever is left, an incomplete character as U+FFFD like a full decode."""
        return self._advance(final=True) if self.read < len(self.ids) else ""

    def _advance(self, final: bool) -> str:
        decode = self.tokenizer.decode
        new = decode(self.ids[self.prefix :], skip_special_tokens=True)
        if new.endswith("\ufffd") and not final:
            return ""  # an incomplete UTF-8 sequence: wait for the next token
        done = decode(self.ids[self.prefix : self.read], skip_special_tokens=True)
        self.prefix, self.read = self.read, len(self.ids)
        # a decoder that rewrites across the window's boundary: the window's text is the best
        # available (already-streamed text cannot be taken back)
        return new[len(done) :] if new.startswith(done) else new


class Detokenizer:
    """One choice's incremental detokenization with stop strings that never leak."""

    def __init__(self, tokenizer, stop: tuple[str, ...]):
        self.decoder = IncrementalDecoder(tokenizer)
        self.stop = stop
        self.keep_emitted = max(map(len, stop), default=1) - 1  # a stop may start this far back
        self.recent = ""  # the last keep_emitted characters emitted
        self.pending = ""  # decoded, not yet emitted: it may begin a stop string

    def append(self, token_id: int) -> tuple[str, bool]:
        """Text the token adds, and whether a stop string was hit (the text ends before it)."""
        added = self.decoder.append(token_id)
        return self._release(added, final=False) if added else ("", False)

    def flush(self) -> tuple[str, bool]:
        """At a finish other than a stop string: the text held back for a possible one (and an
        incomplete last character), cut at a stop string if that completes one."""
        return self._release(self.decoder.flush(), final=True)

    def _release(self, added: str, final: bool) -> tuple[str, bool]:
        self.pending += added
        # A stop string can start no earlier than `recent` (text emitted before was checked with
        # its held-back tail), so the search covers a bounded tail, not the whole output.
        window = self.recent + self.pending
        hits = [at for at in (window.find(s) for s in self.stop) if at != -1]
        if hits:  # the earliest occurrence wins, whatever the list order
            return self._emit(max(0, min(hits) - len(self.recent))), True
        keep = 0 if final else max((_overlap(window, s) for s in self.stop), default=0)
        return self._emit(len(self.pending) - min(keep, len(self.pending))), False

    def _emit(self, n: int) -> str:
        """Emit the first n pending characters."""
        delta, self.pending = self.pending[:n], self.pending[n:]
        if self.keep_emitted:
            self.recent = (self.recent + delta)[-self.keep_emitted :]
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
                text, hit = detok.flush()
                out.tokens[-1].text += text
                if hit:
                    out.finish_reason = FinishReason.STOP
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
