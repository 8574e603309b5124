"""Engine: add_request / step / abort / has_unfinished, plus parallel scoring.

step() = schedule (admit) -> run (prefill new sequences, one decode step for every running one)
-> postprocess (each sequence advances its thought state machine; one batched call samples all
thought rows, one mixes, one samples all visible rows) -> release finished slots.
"""

from __future__ import annotations

import itertools
import logging

import torch

import quietstar
from quietstar.thought_content import uniform_logits

from .config import EngineConfig
from .kv_cache import KVCache
from .limits import RequestLimits
from .model_runner import DecodeOutput, ModelRunner
from .outputs import FinishReason, RequestOutput, ScoreOutput, TokenOutput
from .sampler import SamplingBatch, draw_uniforms, sample_thoughts, sample_visible
from .sampling_params import SamplingParams, ThoughtParams
from .scheduler import Scheduler
from .scoring import score_prompt
from .sequence import Action, Sequence

log = logging.getLogger(__name__)


class Engine:
    def __init__(self, config: EngineConfig, model: quietstar.QuietStarModel | None = None):
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        self.config = config
        self.model = model or quietstar.load(
            config.model,
            config.dtype,
            config.device,
            quantize=config.quantize,
            quantize_group_size=config.quantize_group_size,
            heads=config.heads,
        )
        choice = getattr(self.model, "dtype_choice", None)
        self.dtype_reason = choice.reason if choice else "the model was loaded by the caller"
        self.model.requires_grad_(False)
        if not self.model.backbone.is_fused:
            self.model.backbone.fuse_for_inference()
        self.tokenizer = self.model.tokenizer
        self._uniform_logits = uniform_logits(self.model)  # ThoughtParams.content == "random"
        bb = self.model.backbone.config
        # Mistral's sliding window is not implemented: cap the context at it instead.
        limits = [getattr(bb, "max_position_embeddings", None), getattr(bb, "sliding_window", None)]
        self.max_model_len = min([config.max_model_len] + [x for x in limits if x])
        head_dim = getattr(bb, "head_dim", None) or bb.hidden_size // bb.num_attention_heads
        self.cache = KVCache(
            bb.num_hidden_layers,
            bb.num_key_value_heads,
            head_dim,
            config.max_num_seqs,
            self.max_model_len,
            config.max_num_thoughts,
            config.max_thought_len,
            self.model.dtype,
            self.model.device,
        )
        self.runner = ModelRunner(
            self.model,
            self.cache,
            pad=False,
            cuda_graphs=config.use_cuda_graphs,
            compile_sizes=config.compile_sizes if config.compile == "on" else (),
        )
        self.scheduler = Scheduler(self.cache)
        self.seeds = itertools.count(config.seed)
        self.requests: dict[str, list[Sequence]] = {}
        self.limits = RequestLimits.of(self)

    # ------------------------------------------------------------------ public surface

    @property
    def default_thought_tokens(self) -> int:
        return self.model.config.thought_tokens

    def validate(self, prompt_ids: list[int], params: SamplingParams) -> None:
        """Raise RequestError (a ValueError) naming the field when a request cannot be served."""
        self.limits.validate(prompt_ids, params)

    def add_request(self, request_id: str, prompt_ids: list[int], params: SamplingParams) -> None:
        self.validate(prompt_ids, params)
        if request_id in self.requests:
            raise ValueError(f"request id {request_id!r} is already in use")
        L = self.limits.thought_len(params.thoughts)
        seqs = [
            Sequence(
                f"{request_id}-{i}",
                request_id,
                i,
                list(prompt_ids),
                params,
                L,
                next(self.seeds) if params.seed is None else params.seed + i,
            )
            for i in range(params.n)
        ]
        self.requests[request_id] = seqs
        for seq in seqs:
            if params.max_tokens == 0:
                seq.finish(FinishReason.LENGTH)
            else:
                self.scheduler.add(seq)

    def abort(self, request_id: str) -> None:
        """Finish the request's sequences; their slots are freed by the next step."""
        for seq in self.requests.get(request_id, []):
            if not seq.is_finished:
                seq.finish(FinishReason.ABORT)
        self.scheduler.drop_waiting(request_id)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished() or bool(self.requests)

    @property
    def num_running(self) -> int:
        return len(self.scheduler.running)

    @property
    def num_waiting(self) -> int:
        return len(self.scheduler.waiting)

    @torch.inference_mode()
    def step(self) -> list[RequestOutput]:
        self.scheduler.release_finished()  # aborted since the last step
        if admitted := self.scheduler.admit():  # 1) prefill new sequences
            self._postprocess_prefill(admitted, self.runner.prefill(admitted))
            self.scheduler.release_finished()  # finished at their first token
        if running := self.scheduler.running:  # 2) one decode step for every running sequence
            self._postprocess(running, self.runner.decode(running))
        self.scheduler.release_finished()  # 3) free the slots of finished sequences
        return self._collect()

    def check_integrity(self) -> None:
        self.scheduler.check_integrity()

    # ------------------------------------------------------------------ postprocess

    def _postprocess_prefill(self, seqs: list[Sequence], h: torch.Tensor) -> None:
        """h (S, d): each prompt's last hidden state, the h_base of its first visible token."""
        direct = []
        for i, seq in enumerate(seqs):
            seq.h_base = h[i]
            if seq.after_prefill() == Action.SAMPLE_VISIBLE:
                direct.append(i)
            else:
                self.cache.branch(seq.slot)
        if direct:
            logprobs = torch.log_softmax(self.model.logits(h[direct]), dim=-1)
            self._sample_visible([seqs[i] for i in direct], logprobs)

    def _postprocess(self, seqs: list[Sequence], out: DecodeOutput) -> None:
        """Each sequence's state machine says what its rows are for; one batched call each."""
        groups: dict[Action, list] = {a: [] for a in Action}
        for seq, span in zip(seqs, out.spans):
            if span.base is not None:
                seq.h_base = out.h[span.base]
            groups[seq.advance()].append((seq, span))
        self._sample_thoughts(groups[Action.SAMPLE_THOUGHT], out.h)
        direct, mixed = groups[Action.SAMPLE_VISIBLE], groups[Action.MIX]
        if not direct and not mixed:
            return
        logprobs, weights = [], []
        if direct:
            h_base = out.h[[span.base for _, span in direct]]
            logprobs.append(torch.log_softmax(self.model.logits(h_base), dim=-1))
        if mixed:
            mixed_logprobs, weights = self._mix(mixed, out.h)
            logprobs.append(mixed_logprobs)
        thoughts = [None] * len(direct) + [seq.end_thought() for seq, _ in mixed]
        for seq, _ in mixed:
            self.cache.crop(seq.slot)
        seqs = [seq for seq, _ in direct + mixed]
        weights = [None] * len(direct) + weights
        self._sample_visible(seqs, torch.cat(logprobs), thoughts, weights)

    def _sample_thoughts(self, group: list, h: torch.Tensor) -> None:
        if not group:
            return
        seqs = [seq for seq, _ in group]
        rows = [i for _, span in group for i in span.thoughts]
        lanes = [len(span.thoughts) for _, span in group]
        temperature = [s.params.thoughts.temperature for s, k in zip(seqs, lanes) for _ in range(k)]
        logits = self.model.logits(h[rows])  # (sum K, V)
        if any(s.params.thoughts.content == "random" for s in seqs):  # the content control:
            random = [s.params.thoughts.content == "random" for s, k in zip(seqs, lanes)]
            rows_random = torch.tensor(random, device=h.device).repeat_interleave(
                torch.tensor(lanes, device=h.device)
            )
            logits[rows_random] = self._uniform_logits  # uniform over the allowed ids, same draws
        tokens = sample_thoughts(
            logits,
            None if set(temperature) == {1.0} else torch.tensor(temperature, device=h.device),
            draw_uniforms(seqs, lanes, h.device),
        ).tolist()
        start = 0
        for seq, k in zip(seqs, lanes):
            seq.append_thought_tokens(tokens[start : start + k])
            start += k

    def _mix(self, group: list, h: torch.Tensor) -> tuple[torch.Tensor, list[list[float]]]:
        """Blend each END row with its sequence's h_base (spec §2.3); K > 1 thoughts average
        their probabilities. -> (S, V) log-probs, and each sequence's K mixing weights."""
        rows = [i for _, span in group for i in span.thoughts]
        lanes = [len(span.thoughts) for _, span in group]
        h_base = torch.stack([seq.h_base for seq, _ in group])
        h_base = h_base.repeat_interleave(torch.tensor(lanes, device=h.device), dim=0)
        logits, w = self.model.mix(h_base, h[rows])  # (sum K, V), (sum K, 1)
        probs = torch.softmax(logits, dim=-1)
        if all(k == 1 for k in lanes):
            mean = probs
        else:
            owner = torch.repeat_interleave(
                torch.arange(len(group), device=h.device), torch.tensor(lanes, device=h.device)
            )
            mean = probs.new_zeros(len(group), probs.shape[-1]).index_add_(0, owner, probs)
            mean = mean / torch.tensor(lanes, dtype=probs.dtype, device=h.device)[:, None]
        w = w[:, 0].tolist()
        starts = list(itertools.accumulate([0] + lanes))
        return mean.log(), [w[a:b] for a, b in zip(starts, starts[1:])]

    def _sample_visible(self, seqs, logprobs, thoughts=None, weights=None) -> None:
        """logprobs (S, V): one row per sequence; sample all, then emit each token."""
        batch = SamplingBatch.of(seqs, logprobs.shape[-1], logprobs.device)
        sampled = sample_visible(logprobs, batch)
        thoughts = thoughts or [None] * len(seqs)
        weights = weights or [None] * len(seqs)
        for i, seq in enumerate(seqs):
            top = sampled.top_logprobs[i]
            self._emit(seq, sampled.token_ids[i], sampled.logprobs[i], top, thoughts[i], weights[i])

    def _emit(self, seq: Sequence, token: int, logprob: float, top, thoughts, weights) -> None:
        seq.append_visible(token)
        include = seq.params.thoughts.include and thoughts is not None
        seq.outbox.append(
            TokenOutput(
                token,
                "",  # filled by the output processor, which also applies stop strings
                logprob if seq.params.logprobs is not None else None,
                top,
                thoughts if include else None,
                weights if include else None,
            )
        )
        reason = self._finish_reason(seq, token)
        if reason is not None:
            seq.finish(reason)
        elif seq.is_thinking:
            self.cache.branch(seq.slot)  # the new thought attends the slot's whole prefix

    def _finish_reason(self, seq: Sequence, token: int) -> FinishReason | None:
        p = seq.params
        if token in p.stop_token_ids:
            return FinishReason.STOP
        if not p.ignore_eos and token == self.tokenizer.eos_token_id:
            return FinishReason.STOP
        if seq.num_visible_tokens >= p.max_tokens:
            return FinishReason.LENGTH
        if len(seq.prompt_ids) + seq.num_visible_tokens >= self.max_model_len:
            return FinishReason.LENGTH
        return None

    def _collect(self) -> list[RequestOutput]:
        outputs = []
        for request_id, seqs in list(self.requests.items()):
            for seq in seqs:
                if seq.outbox or (seq.is_finished and not seq.is_reported):
                    outputs.append(self._output(seq))
            if all(s.is_finished for s in seqs):
                del self.requests[request_id]
        return outputs

    @staticmethod
    def _output(seq: Sequence) -> RequestOutput:
        tokens, seq.outbox = seq.outbox, []
        seq.is_reported = seq.is_finished
        return RequestOutput(
            seq.request_id,
            seq.index,
            tokens,
            seq.is_finished,
            seq.finish_reason,
            len(seq.prompt_ids),
            seq.num_visible_tokens,
            seq.num_thought_tokens,
        )

    # ------------------------------------------------------------------ scoring

    @torch.inference_mode()
    def score(
        self,
        prompt_ids: list[int],
        thoughts: ThoughtParams,
        top_logprobs: int = 0,
        seed: int | None = None,
    ) -> ScoreOutput:
        """Thought-aided log-prob of every prompt token, all positions in L+2 batched passes
        (spec §3.4); K thoughts per position average their probabilities."""
        self.limits.validate_prompt(prompt_ids)
        self.limits.validate_thoughts(thoughts)
        L = self.limits.thought_len(thoughts)
        seed = self.config.seed if seed is None else seed
        return score_prompt(self.model, prompt_ids, thoughts, L, top_logprobs, seed)
