"""The decode attention's kernels against plain softmax attention: the fused CPU kernel with its
log-sum-exp, the plain-ops version used off the CPU, and the split-KV merge of two key sets."""

import math

import pytest
import torch

from server.engine.attention import sdpa_lse, sdpa_lse_math


def reference(q, k, v, mask):
    scores = (q.double() @ k.double().transpose(-1, -2)) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, -1) @ v.double(), torch.logsumexp(scores, -1)


def inputs(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(3, 2, n, 16, generator=g).to(dtype) for n in (4, 9, 9))
    mask = torch.ones(3, 1, 1, 9, dtype=torch.bool)
    mask[1, ..., 5:] = False  # a shorter prefix
    mask[2, ..., 1:] = False  # one key only
    return q, k, v, mask


@pytest.mark.parametrize("kernel", [sdpa_lse, sdpa_lse_math], ids=["fused", "math"])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_attention_and_log_sum_exp_match_softmax(kernel, dtype, tol):
    q, k, v, mask = inputs(dtype)
    bias = torch.zeros(mask.shape, dtype=dtype).masked_fill(~mask, float("-inf"))
    out, lse = kernel(q, k, v, bias)
    want_out, want_lse = reference(q, k, v, mask)
    assert out.dtype == dtype and lse.dtype == torch.float32
    torch.testing.assert_close(out.double(), want_out, atol=tol, rtol=tol)
    torch.testing.assert_close(lse.double(), want_lse, atol=tol, rtol=tol)


def test_split_keys_merged_by_log_sum_exp_equal_one_call():
    """What `DecodeAttention._add_thoughts` relies on: attention over prefix + thought keys is
    the log-sum-exp-weighted sum of attention over each part."""
    q, k, v, _ = inputs(torch.float32, seed=1)
    zero = torch.zeros(1, 1, 1, 1)
    (o1, l1), (o2, l2) = (
        sdpa_lse(q, k[..., :6, :], v[..., :6, :], zero),
        sdpa_lse(q, k[..., 6:, :], v[..., 6:, :], zero),
    )
    lse = torch.logaddexp(l1, l2)
    merged = o1 * (l1 - lse).exp()[..., None] + o2 * (l2 - lse).exp()[..., None]
    want, want_lse = reference(q, k, v, torch.ones(1, 1, 1, 9, dtype=torch.bool))
    torch.testing.assert_close(merged.double(), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse.double(), want_lse, atol=1e-5, rtol=1e-5)
