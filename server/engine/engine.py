"""Engine: add_request / step / abort / has_unfinished, plus parallel scoring.

step() = admit+prefill -> decode one step for every running sequence -> postprocess (sample
thought tokens, mix at END, sample visible tokens, crop thought K/V) -> release finished slots.
"""

from __future__ import annotations

import itertools
import logging

import torch

import quietstar
from quietstar.parallel import parallel_thought_forward

from .config import EngineConfig
from .kv_cache import KVCache
from .model_runner import ModelRunner, StepRows
from .outputs import FinishReason, RequestOutput, ScoreOutput, TokenOutput
from .sampler import sample_thoughts, sample_visible
from .sampling_params import RequestError, SamplingParams, ThoughtParams
from .scheduler import Scheduler
from .sequence import Detokenizer, Sequence

log = logging.getLogger(__name__)
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}


class Engine:
    def __init__(self, config: EngineConfig, model: quietstar.QuietStarModel | None = None):
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        self.config = config
        self.model = model or quietstar.load(config.model, DTYPES[config.dtype], config.device)
        self.model.requires_grad_(False)
        if not self.model.backbone.is_fused:
            self.model.backbone.fuse_for_inference()
        self.tokenizer = self.model.tokenizer
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
            config.max_parallel_thoughts,
            config.max_thought_len,
            self.model.dtype,
            self.model.device,
        )
        self.runner = ModelRunner(self.model, self.cache)
        self.scheduler = Scheduler(self.cache)
        self.detok = Detokenizer(self.tokenizer)
        self.seeds = itertools.count(config.seed)
        self.requests: dict[str, list[Sequence]] = {}

    # ------------------------------------------------------------------ public surface

    @property
    def default_thought_tokens(self) -> int:
        return self.model.config.thought_tokens

    def validate(self, prompt_ids: list[int], params: SamplingParams) -> None:
        """Raise ValueError naming the problem when a request cannot be served."""
        self._validate_prompt(prompt_ids)
        self._validate_thoughts(params.thoughts)
        if len(prompt_ids) + params.max_tokens > self.max_model_len:
            raise RequestError(
                f"this model's maximum context length is {self.max_model_len} tokens; the request "
                f"has {len(prompt_ids)} prompt tokens and asks for {params.max_tokens} completion tokens",
                "max_tokens",
            )

    def _validate_prompt(self, prompt_ids: list[int]) -> None:
        if not prompt_ids:
            raise RequestError("the prompt is empty", "prompt")
        vocab = self.model.vocab_size
        if min(prompt_ids) < 0 or max(prompt_ids) >= vocab:
            raise RequestError(f"prompt token ids must be in [0, {vocab})", "prompt")
        if len(prompt_ids) > self.max_model_len:
            raise RequestError(
                f"this model's maximum context length is {self.max_model_len} tokens; "
                f"the prompt has {len(prompt_ids)}",
                "prompt",
            )

    def _validate_thoughts(self, th: ThoughtParams) -> None:
        if not th.enabled:
            return
        L = self.default_thought_tokens if th.num_tokens is None else th.num_tokens
        if L > self.config.max_thought_tokens:
            raise RequestError(
                f"thought tokens {L} exceed this server's maximum of "
                f"{self.config.max_thought_tokens}",
                "thoughts.tokens",
            )
        if th.count > self.config.max_parallel_thoughts:
            raise RequestError(
                f"thought count {th.count} exceeds this server's maximum of "
                f"{self.config.max_parallel_thoughts}",
                "thoughts.count",
            )

    def add_request(self, request_id: str, prompt_ids: list[int], params: SamplingParams) -> None:
        self.validate(prompt_ids, params)
        if request_id in self.requests:
            raise ValueError(f"request id {request_id!r} is already in use")
        th = params.thoughts
        L = self.default_thought_tokens if th.num_tokens is None else th.num_tokens
        seqs = []
        for i in range(params.n):
            seed = next(self.seeds) if params.seed is None else params.seed + i
            gen = torch.Generator(device=self.model.device).manual_seed(seed)
            seqs.append(
                Sequence(f"{request_id}-{i}", request_id, i, list(prompt_ids), params, L, gen)
            )
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
        for seq in self.scheduler.admit():  # 1) prefill new sequences
            self._after_base(seq, self.runner.prefill(seq))
        self.scheduler.release_finished()
        if self.scheduler.running:  # 2) one step for every running sequence
            self._postprocess(self.runner.decode(self.scheduler.running))
        self.scheduler.release_finished()  # 3) free slots of finished sequences
        return self._collect()

    def check_integrity(self) -> None:
        self.scheduler.check_integrity()

    # ------------------------------------------------------------------ postprocess

    def _postprocess(self, rows: StepRows) -> None:
        direct_rows, sample_rows, mix_rows = [], [], []
        for seq in self.scheduler.running:
            fed_base = seq.pending_token is not None
            seq.pending_token = None
            if fed_base:
                self._after_base(seq, rows.base[seq.slot], direct_rows)
            if seq.thought_step >= 0 and seq.slot in rows.thoughts:  # START fused with the base
                self._advance_thought(seq, rows.thoughts[seq.slot], sample_rows, mix_rows)
        self._emit_direct(direct_rows)
        self._sample_thoughts(sample_rows)
        self._mix_and_emit(mix_rows)

    def _after_base(self, seq: Sequence, h: torch.Tensor, direct_rows: list | None = None) -> None:
        """A visible token (or the prompt) was fed: think, or sample the next token directly
        (queued in `direct_rows` so one LM-head matmul serves the whole batch)."""
        seq.h_base = h
        if seq.is_thinking:
            if seq.thought_step < 0:
                self._begin_thought(seq)
            return
        if direct_rows is None:
            self._emit_direct([(seq, h)])
        else:
            direct_rows.append((seq, h))

    def _emit_direct(self, rows) -> None:
        if not rows:
            return
        logprobs = torch.log_softmax(self.model.logits(torch.stack([h for _, h in rows])), dim=-1)
        for (seq, _), row in zip(rows, logprobs):
            self._emit(seq, row, None, None)

    def _advance_thought(self, seq, h, sample_rows, mix_rows) -> None:
        t, L = seq.thought_step, seq.num_thought_tokens_per_step
        if t < L:
            sample_rows.append((seq, h))
        elif t == L + 1:
            mix_rows.append((seq, h))
            return
        seq.thought_step += 1

    def _sample_thoughts(self, rows) -> None:
        if not rows:
            return
        logits = self.model.logits(torch.cat([h for _, h in rows]))  # (sum K, V)
        start = 0
        for seq, h in rows:
            part = logits[start : start + len(h)]
            start += len(h)
            tokens = sample_thoughts(part, seq.params.thoughts.temperature, seq.generator)
            for ids, token in zip(seq.thought_ids, tokens):
                ids.append(token)
            seq.num_thought_tokens += len(tokens)

    def _mix_and_emit(self, rows) -> None:
        if not rows:
            return
        h_post = torch.cat([h for _, h in rows])
        h_base = torch.cat([seq.h_base.expand(len(h), -1) for seq, h in rows])
        logits, w = self.model.mix(h_base, h_post)  # (sum K, V), (sum K, 1)
        start = 0
        for seq, h in rows:
            k = len(h)
            probs = torch.softmax(logits[start : start + k], dim=-1).mean(0)  # K > 1: mean of K
            weights = w[start : start + k, 0].tolist()
            start += k
            thoughts = seq.thought_ids
            self.cache.crop(seq.slot)
            seq.thought_step = -1
            self._emit(seq, probs.log(), thoughts, weights)

    def _emit(self, seq: Sequence, logprobs, thoughts, weights) -> None:
        s = sample_visible(logprobs, seq.params, seq.generator, seq.token_counts)
        seq.output_ids.append(s.token_id)
        seq.token_counts[s.token_id] = seq.token_counts.get(s.token_id, 0) + 1
        text, hit_stop = self.detok.append(seq)
        include = seq.params.thoughts.include and thoughts is not None
        seq.outbox.append(
            TokenOutput(
                s.token_id,
                text,
                s.logprob if seq.params.logprobs is not None else None,
                s.top_logprobs,
                thoughts if include else None,
                weights if include else None,
            )
        )
        reason = self._finish_reason(seq, s.token_id, hit_stop)
        if reason is not None:
            if not hit_stop:  # release text held back for a possible stop string
                seq.outbox[-1].text += self.detok.flush(seq)
            seq.finish(reason)
            return
        seq.pending_token = s.token_id
        if seq.is_thinking:
            self._begin_thought(seq)

    def _begin_thought(self, seq: Sequence) -> None:
        """START is fed next step; its rows attend the slot's whole current prefix."""
        seq.start_thought()
        self.cache.branch(seq.slot)

    def _finish_reason(self, seq: Sequence, token: int, hit_stop: bool) -> FinishReason | None:
        p = seq.params
        if hit_stop or token in p.stop_token_ids:
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
        self._validate_prompt(prompt_ids)
        self._validate_thoughts(thoughts)
        ids = torch.tensor([prompt_ids], device=self.model.device)
        if thoughts.enabled:
            L = self.default_thought_tokens if thoughts.num_tokens is None else thoughts.num_tokens
            gen = torch.Generator(device=self.model.device).manual_seed(
                self.config.seed if seed is None else seed
            )
            out = parallel_thought_forward(
                self.model,
                ids.expand(thoughts.count, -1),
                L,
                n_talk=1,
                temperature=thoughts.temperature,
                generator=gen,
            )
            logprobs = torch.softmax(out.mixed_logits[0], -1).mean(0).log()
            num_thought = thoughts.count * L * len(prompt_ids)
        else:
            positions = torch.arange(len(prompt_ids), device=ids.device)[None]
            h = self.model.hidden(ids, positions, quietstar.llama.DenseCausalAttention())
            logprobs, num_thought = torch.log_softmax(self.model.logits(h)[0], -1), 0
        targets = logprobs[:-1].gather(-1, ids[0, 1:, None]).squeeze(-1).tolist()
        tops: list = [None]
        if top_logprobs:
            values, idx = logprobs[:-1].topk(top_logprobs, dim=-1)
            tops += [list(zip(i, v)) for i, v in zip(idx.tolist(), values.tolist())]
        else:
            tops += [None] * (len(prompt_ids) - 1)
        return ScoreOutput(list(prompt_ids), [None] + targets, tops, num_thought)
