"""The trainer's parallel thought forward equals one explicit sequence per position (spec §3.4),
for every talk offset s (mixed logits) and for every sampled thought token (policy log-probs)."""

from __future__ import annotations

import pytest
import torch

import quietstar
from quietstar import END_THOUGHT, START_THOUGHT
from quietstar.llama import DenseCausalAttention
from quietstar.reference import thought_aided_logits
from tests.training.train_support import make_hf_checkpoint, randomize_heads, single_thread  # noqa: F401
from training.config import TrainConfig
from training.objective import thought_forward

TOL = dict(atol=1e-4, rtol=1e-4)


def hidden(model, ids: list[int]) -> torch.Tensor:
    x = torch.tensor([ids])
    return model.hidden(x, torch.arange(len(ids))[None], DenseCausalAttention())[0]  # (T, d)


def explicit_talk(model, row: list[int], i: int, thought: list[int], s: int):
    """prefix x<=i + START + thought + END + x_{i+1..i+s} -> (mixed logits, w) predicting x_{i+s+1}."""
    seq = row[: i + 1] + [START_THOUGHT] + thought + [END_THOUGHT] + row[i + 1 : i + s + 1]
    h_post = hidden(model, seq)[-1]
    h_base = hidden(model, row[: i + s + 1])[-1]
    return model.mix(h_base, h_post)


def explicit_thought_logprobs(model, row: list[int], i: int, thought: list[int], temp: float):
    """log softmax(logits / temp) of each thought token, from prefix + START + earlier tokens."""
    h = hidden(model, row[: i + 1] + [START_THOUGHT] + thought)
    logits = model.logits(h[i + 1 : i + 1 + len(thought)])  # outputs of START, c_1 .. c_{K-1}
    logp = torch.log_softmax(logits / temp, dim=-1)
    return logp.gather(-1, torch.tensor(thought)[:, None]).squeeze(-1)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_trainer_forward_equals_reference_all_offsets(tmp_path, family):
    model = quietstar.load(make_hf_checkpoint(tmp_path / family, family), dtype=torch.float32)
    randomize_heads(model, seed=1)
    cfg = TrainConfig(n_ahead=6, n_ahead_talk=3, seq_len=10, data="unused")
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(3, 259, (2, 10), generator=g).repeat_interleave(2, dim=0)
    key_mask = torch.ones_like(ids, dtype=torch.bool)
    key_mask[2:, 7:] = False  # the second sequence (both passes) is right-padded
    with torch.no_grad():
        out = thought_forward(model, ids, key_mask, cfg, torch.Generator().manual_seed(4))
    assert out.thought_ids.shape == (4, 10, cfg.thought_tokens)
    assert bool(torch.cat(out.mixing_weights).abs().max() > 1e-2)  # the heads really mix
    checked = 0
    for b in range(ids.shape[0]):
        real = int(key_mask[b].sum())
        row = ids[b, :real].tolist()
        for i in range(real - 1):
            thought = out.thought_ids[b, i].tolist()
            ref_lp = explicit_thought_logprobs(model, row, i, thought, cfg.reinforce_temperature)
            torch.testing.assert_close(out.thought_logprobs[b, i], ref_lp, **TOL)
            ref0 = thought_aided_logits(model, row[: i + 1], thought).logits  # the core's oracle
            torch.testing.assert_close(out.mixed_logits[0][b, i], ref0, **TOL)
            for s in range(cfg.n_ahead_talk):
                if i + s + 1 >= real:
                    break
                logits, w = explicit_talk(model, row, i, thought, s)
                torch.testing.assert_close(out.mixed_logits[s][b, i], logits, **TOL)
                torch.testing.assert_close(out.mixing_weights[s][b, i], w, **TOL)
                checked += 1
    assert checked > 40


def test_pass_copies_sample_different_thoughts(tmp_path):
    model = quietstar.load(make_hf_checkpoint(tmp_path / "m"), dtype=torch.float32)
    cfg = TrainConfig(n_ahead=6, n_ahead_talk=1, seq_len=8, data="unused")
    ids = torch.randint(3, 259, (1, 8)).repeat_interleave(2, dim=0)
    with torch.no_grad():
        out = thought_forward(
            model,
            ids,
            torch.ones_like(ids, dtype=torch.bool),
            cfg,
            torch.Generator().manual_seed(0),
        )
    assert not torch.equal(out.thought_ids[0], out.thought_ids[1])
