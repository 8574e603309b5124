"""Compact Llama-family backbone (Llama 2/3, Mistral, Qwen2, SmolLM2) that loads HF weights.

Written in the style of gpt-fast: the network only. Attention is delegated to an `attention`
object passed to `forward`, so the engine (slot KV cache with thought branches), the trainer
(parallel thought layout of spec §3.4) and the reference (dense causal) share one network.
Numerics follow transformers' Llama (fp32 RMSNorm, rotate-half RoPE with HF's rope scalings).
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")


class Attention(Protocol):
    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q (B, T, H, D), k/v (B, T, KVH, D) for the new tokens (RoPE applied) -> (B, T, H, D)."""
        ...


class DenseCausalAttention:
    """No cache: causal attention over the tokens of this call, with an optional key mask."""

    def __init__(self, key_mask: torch.Tensor | None = None):
        self.key_mask = key_mask  # (B, T) bool, True = real token

    def attend(self, layer: int, q, k, v):
        return sdpa(q, k, v, causal_mask(q.shape[1], self.key_mask, q.device))


def causal_mask(T: int, key_mask: torch.Tensor | None, device) -> torch.Tensor:
    """(T, T) lower-triangular, or (B, 1, T, T) with padded keys (key_mask (B, T)) blocked."""
    mask = torch.ones(T, T, dtype=torch.bool, device=device).tril()
    return mask if key_mask is None else mask & key_mask[:, None, None, :]


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Scaled dot-product attention in (B, T, H, D) layout with GQA; mask broadcastable bool."""
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, enable_gqa=True
    )
    return out.transpose(1, 2)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # HF numerics: normalise in fp32, cast back, then scale (one fused kernel for the first part)
        return self.weight * F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)


class Rotary(nn.Module):
    """RoPE tables from HF's own rope-parameter functions (default, linear, llama3, yarn)."""

    def __init__(self, hf_config):
        super().__init__()
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

        params = getattr(hf_config, "rope_parameters", None) or {}
        rope_type = params.get("rope_type", "default")
        head_dim = _head_dim(hf_config)
        if rope_type not in ("default", "linear", "llama3", "yarn"):
            raise ValueError(
                f"rope_type {rope_type!r} is not supported (default, linear, llama3, yarn)"
            )
        # Real CPU tensors even when the backbone is built under `torch.device("meta")`: HF's
        # rope functions copy to the given device, which fails for meta tensors.
        with torch.device("cpu"):
            if rope_type == "default":
                theta = params.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0))
                inv_freq = 1.0 / (
                    theta ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim)
                )
                scaling = 1.0
            else:
                inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](hf_config, torch.device("cpu"))
        self.register_buffer("inv_freq", inv_freq.float(), persistent=False)
        self.scaling = float(scaling)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype):
        freqs = positions[..., None].float() * self.inv_freq  # (B, T, D/2)
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * self.scaling).to(dtype), (emb.sin() * self.scaling).to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x (B, T, H, D); cos/sin (B, T, D)
    return x * cos[:, :, None] + _rotate_half(x) * sin[:, :, None]


def _head_dim(cfg) -> int:
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


class SelfAttention(nn.Module):
    def __init__(self, cfg, layer: int):
        super().__init__()
        self.layer = layer
        self.n_heads, self.n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = _head_dim(cfg)
        qkv_bias = cfg.model_type == "qwen2" or getattr(cfg, "attention_bias", False)
        o_bias = cfg.model_type != "qwen2" and getattr(cfg, "attention_bias", False)
        d = cfg.hidden_size
        self.q_proj = nn.Linear(d, self.n_heads * self.head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(d, self.n_kv * self.head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(d, self.n_kv * self.head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, d, bias=o_bias)
        self.qkv_proj: nn.Linear | None = None  # set by fuse(); inference only
        self.sizes = (
            self.n_heads * self.head_dim,
            self.n_kv * self.head_dim,
            self.n_kv * self.head_dim,
        )

    rope = staticmethod(apply_rope)  # of the fused path; an engine model may take a kernel's

    def fuse(self) -> None:
        """Replace q/k/v by one matmul (fewer, larger kernels for decode). Irreversible."""
        self.qkv_proj = _fuse_linears(self.q_proj, self.k_proj, self.v_proj)
        del self.q_proj, self.k_proj, self.v_proj

    def forward(self, x, cos, sin, attention: Attention):
        B, T, _ = x.shape
        if self.qkv_proj is not None:  # fused: rotate q and k in one go
            qk, v = self.qkv_proj(x).split((self.sizes[0] + self.sizes[1], self.sizes[2]), dim=-1)
            qk = self.rope(qk.view(B, T, self.n_heads + self.n_kv, self.head_dim), cos, sin)
            q, k = qk.split((self.n_heads, self.n_kv), dim=2)
        else:
            q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim)
            k = self.k_proj(x).view(B, T, self.n_kv, self.head_dim)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            v = self.v_proj(x)
        v = v.view(B, T, self.n_kv, self.head_dim)
        out = attention.attend(self.layer, q, k, v)  # (B, T, H, D)
        return self.o_proj(out.reshape(B, T, -1))


def silu_gate(gate_up: torch.Tensor) -> torch.Tensor:
    """[gate, up] (..., 2m), as the fused gate/up projection gives them -> silu(gate) * up."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


class MLP(nn.Module):
    gated = staticmethod(silu_gate)  # of the fused path; an engine model may take a kernel's

    def __init__(self, cfg):
        super().__init__()
        bias = getattr(cfg, "mlp_bias", False)
        d, m = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = nn.Linear(d, m, bias=bias)
        self.up_proj = nn.Linear(d, m, bias=bias)
        self.down_proj = nn.Linear(m, d, bias=bias)

        self.gate_up_proj: nn.Linear | None = None  # set by fuse(); inference only

    def fuse(self) -> None:
        self.gate_up_proj = _fuse_linears(self.gate_proj, self.up_proj)
        del self.gate_proj, self.up_proj

    def forward(self, x):
        if self.gate_up_proj is not None:
            return self.down_proj(self.gated(self.gate_up_proj(x)))
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def _fuse_linears(*linears: nn.Linear) -> nn.Linear:
    first = linears[0]
    out = sum(lin.out_features for lin in linears)
    has_bias = first.bias is not None
    fused = nn.Linear(
        first.in_features, out, bias=has_bias, device=first.weight.device, dtype=first.weight.dtype
    )
    with torch.no_grad():
        fused.weight.copy_(torch.cat([lin.weight for lin in linears]))
        if has_bias:
            fused.bias.copy_(torch.cat([lin.bias for lin in linears]))
    fused.requires_grad_(False)
    return fused


class DecoderLayer(nn.Module):
    def __init__(self, cfg, layer: int):
        super().__init__()
        self.self_attn = SelfAttention(cfg, layer)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, attention):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, attention)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaBackbone(nn.Module):
    """Embeddings, decoder layers, final norm and LM head; state-dict keys match HF's."""

    def __init__(self, hf_config):
        super().__init__()
        if hf_config.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"model_type {hf_config.model_type!r} is not a supported Llama-family architecture "
                f"({', '.join(SUPPORTED_MODEL_TYPES)})"
            )
        self.config = hf_config
        d = hf_config.hidden_size
        self.embed_tokens = nn.Embedding(hf_config.vocab_size, d)
        self.layers = nn.ModuleList(
            DecoderLayer(hf_config, i) for i in range(hf_config.num_hidden_layers)
        )
        self.norm = RMSNorm(d, hf_config.rms_norm_eps)
        self.rotary = Rotary(hf_config)
        self.is_fused = False
        self.lm_head = nn.Linear(d, hf_config.vocab_size, bias=False)
        self.tie_weights()

    def tie_weights(self) -> None:
        """Share the LM head with the embeddings when the config says so (SmolLM2, Qwen2-0.5B)."""
        if getattr(self.config, "tie_word_embeddings", False):
            self.lm_head.weight = self.embed_tokens.weight

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, attention: Attention):
        """x (B, T, d) input embeddings; positions (B, T) -> final-norm hidden states (B, T, d)."""
        cos, sin = self.rotary(positions, x.dtype)
        for layer in self.layers:
            x = layer(x, cos, sin, attention)
        return self.norm(x)

    def fuse_for_inference(self, prepack: bool = True) -> None:
        """Fuse q/k/v and gate/up projections in every layer and, on CPU, give every linear its
        fastest inference form (oneDNN pre-packing for fp32, and for bf16 where it is native;
        quietstar's decode kernels for bf16 where they build) and the norms and RoPE quietstar's
        kernels (`prepack=False`, only for measuring what this buys, does neither). The model can
        no longer be saved or trained afterwards; the engine calls this on the model it owns."""
        from .kernels.modules import use_kernel_layers
        from .packed import pack_linears

        for layer in self.layers:
            layer.self_attn.fuse()
            layer.mlp.fuse()
        if prepack:
            pack_linears(self)  # decided once for the model's dtype; a no-op off the CPU
            use_kernel_layers(self)  # where quietstar's CPU kernels are built
        self.is_fused = True

    def hf_state_dict_keys(self) -> dict[str, str]:
        """Our parameter name -> the HF checkpoint key that holds it."""
        keys = {}
        for name, _ in self.named_parameters(remove_duplicate=False):
            if name == "lm_head.weight" and self.lm_head.weight is self.embed_tokens.weight:
                continue
            keys[name] = name if name.startswith("lm_head") else "model." + name
        return keys
