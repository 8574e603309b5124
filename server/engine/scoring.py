"""Scoring: the thought-aided log-prob of every prompt token in one parallel pass (spec §3.4),
or the plain log-probs with thoughts off. Used by `Engine.score` (completions with echo)."""

from __future__ import annotations

import torch

import quietstar
from quietstar.parallel import parallel_thought_forward
from quietstar.thought_content import random_thoughts

from .outputs import ScoreOutput
from .sampling_params import ThoughtParams


def score_prompt(
    model: quietstar.QuietStarModel,
    prompt_ids: list[int],
    thoughts: ThoughtParams,
    thought_len: int,
    top_logprobs: int,
    seed: int,
) -> ScoreOutput:
    """All positions in L + 2 batched passes; K thoughts per position average their
    probabilities. The first position has no log-prob (nothing predicts it)."""
    ids = torch.tensor([prompt_ids], device=model.device)
    if thoughts.enabled:
        generator = torch.Generator(device=model.device).manual_seed(seed)
        shape = (thoughts.num_thoughts, len(prompt_ids), thought_len)
        out = parallel_thought_forward(
            model,
            ids.expand(thoughts.num_thoughts, -1),
            thought_len,
            n_talk=1,
            temperature=thoughts.temperature,
            thought_ids=(
                random_thoughts(model, shape, generator) if thoughts.content == "random" else None
            ),
            generator=generator,
        )
        logprobs = torch.softmax(out.mixed_logits[0], -1).mean(0).log()  # (T, V)
        num_thought = thoughts.num_thoughts * thought_len * len(prompt_ids)
    else:
        positions = torch.arange(len(prompt_ids), device=ids.device)[None]
        h = model.hidden(ids, positions, quietstar.llama.DenseCausalAttention())
        logprobs, num_thought = torch.log_softmax(model.logits(h)[0], -1), 0
    targets = logprobs[:-1].gather(-1, ids[0, 1:, None]).squeeze(-1).tolist()
    tops: list = [None]
    if top_logprobs:
        values, idx = logprobs[:-1].topk(top_logprobs, dim=-1)
        tops += [list(zip(i, v)) for i, v in zip(idx.tolist(), values.tolist())]
    else:
        tops += [None] * (len(prompt_ids) - 1)
    return ScoreOutput(list(prompt_ids), [None] + targets, tops, num_thought)
