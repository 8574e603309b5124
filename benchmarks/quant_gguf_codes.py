"""Do `--quantize int4` (group 32) and `--quantize q4_1` on the default model reproduce the GGUF's
own Q4_1 weights? `python -m benchmarks.quant_gguf_codes`.

A GGUF Q4_1 block of 32 weights stores d, m (fp16) and 4-bit codes q with w = q d + m; llama.cpp
picks d = (max - min) / 15 and m = min, the rule quietstar/quant.py uses on the (bf16)
dequantised weights. This script decodes every Q4_1 tensor of the packaged GGUF and compares its
codes and values with ours. Attention q/k rows are permuted by the GGUF writer, so those two are
compared as row multisets (sorted rows), which is enough to show code identity. q4_1 keeps d and m
in fp16 as the GGUF does; its scales and minimums are compared bit for bit on the other tensors.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

BLOCK = 32
NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def decode_q4_1(tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A GGUF Q4_1 tensor -> (codes (N, K) int64, values (N, K) fp32, and each block's fp16 d
    and m, (N, K / 32, 2))."""
    K, N = (int(x) for x in tensor.shape)
    raw = np.asarray(tensor.data).view(np.uint8).reshape(N * K // BLOCK, 20)
    dm = raw[:, 0:4].copy().view(np.float16)  # (blocks, 2): d, m
    nibbles = raw[:, 4:]
    q = np.concatenate([nibbles & 15, nibbles >> 4], axis=1)  # element j then j + 16
    values = q * dm[:, 0:1].astype(np.float32) + dm[:, 1:2].astype(np.float32)
    codes = torch.from_numpy(q.astype(np.int64)).view(N, K)
    return codes, torch.from_numpy(values).view(N, K), torch.from_numpy(dm).view(N, K // BLOCK, 2)


def main(argv: list[str] | None = None) -> int:
    from gguf import GGUFReader
    from safetensors import safe_open

    from quietstar.default_model import default_model_dir, find_gguf
    from quietstar.quant import dequantize_int4, dequantize_q4_1, quantize_int4, quantize_q4_1

    argparse.ArgumentParser(
        prog="python -m benchmarks.quant_gguf_codes", description=__doc__
    ).parse_args(argv)
    reader = GGUFReader(find_gguf())
    hf = safe_open(default_model_dir() / "model.safetensors", "pt")
    same = total = same_q4_1 = same_dm = blocks = 0
    worst = worst_q4_1 = 0.0
    types: dict[str, int] = {}
    for t in reader.tensors:
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
        if t.tensor_type.name != "Q4_1":
            continue
        _, layer, kind, _ = t.name.split(".")
        codes, values, dm = decode_q4_1(t)
        weight = hf.get_tensor(f"model.layers.{layer}.{NAMES[kind]}.weight")
        ours, scales_zeros = quantize_int4(weight, BLOCK)
        ours = ours.long()
        q, d, m = quantize_q4_1(weight)
        if kind in ("attn_q", "attn_k"):
            codes, ours = codes.sort(dim=0).values, ours.sort(dim=0).values
            q = q.long().sort(dim=0).values
        else:
            same_dm += int(((d == dm[..., 0]) & (m == dm[..., 1])).sum())
            blocks += d.numel()
            worst_q4_1 = max(worst_q4_1, (dequantize_q4_1(q, d, m) - values).abs().max().item())
            worst = max(
                worst,
                (dequantize_int4(ours.to(torch.uint8), scales_zeros, BLOCK) - values)
                .abs()
                .max()
                .item(),
            )
        same += int((codes == ours).sum())
        same_q4_1 += int((codes == q.long()).sum())
        total += codes.numel()
    report = {
        "gguf_tensor_types": types,
        "q4_1_codes_identical": same / total,
        "q4_1_weights": total,
        "max_abs_value_difference_fp32_scales": worst,
        "q4_1_mode_codes_identical": same_q4_1 / total,
        "q4_1_mode_scales_and_minimums_identical": same_dm / blocks,
        "q4_1_mode_max_abs_value_difference": worst_q4_1,
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
