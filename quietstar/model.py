"""QuietStarModel: backbone + learned start/end thought vectors + mixing head (spec §1–§2).

Inputs are token ids where two negative sentinels stand for the meta vectors (START_THOUGHT,
END_THOUGHT): spec §1.2 feeds `start_embedding[0] * scale`, never the embedding rows.
No sampling and no scheduling here.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import QuietStarConfig
from .llama import Attention, LlamaBackbone
from .mixing_head import MixingHead, blend

START_THOUGHT = -1
END_THOUGHT = -2


class QuietStarModel(nn.Module):
    def __init__(
        self,
        backbone: LlamaBackbone,
        config: QuietStarConfig,
        start_thought_id: int,
        end_thought_id: int,
        masked_token_ids: list[int] | None = None,
    ):
        super().__init__()
        self.backbone = backbone
        self.config = config
        d = backbone.config.hidden_size
        # spec §1.2: rows [0] are the vectors (stored / scale); rows [1] are the unused log-std.
        self.start_embedding = nn.Parameter(torch.zeros(2, d))
        self.end_embedding = nn.Parameter(torch.zeros(2, d))
        self.mixing_head = MixingHead(d, config.mixing_head_hidden or d)
        self.start_thought_id = start_thought_id
        self.end_thought_id = end_thought_id
        masked = sorted(set(masked_token_ids or []) | {start_thought_id, end_thought_id})
        self.register_buffer(
            "masked_token_ids", torch.tensor(masked, dtype=torch.long), persistent=False
        )
        self.tokenizer = None  # attached by the loader
        self.quantization = None  # a quant.QuantSpec once quant.quantize_model has run

    @property
    def dtype(self) -> torch.dtype:
        return self.backbone.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.backbone.embed_tokens.weight.device

    @property
    def vocab_size(self) -> int:
        return self.backbone.embed_tokens.weight.shape[0]  # == LM-head rows (grown together)

    def init_meta_vectors(self, token_id: int) -> None:
        """spec §1.2: both meta vectors start as the embedding of the first '---' sub-token."""
        with torch.no_grad():
            row = self.backbone.embed_tokens.weight[token_id].float() / self.config.embedding_scale
            self.start_embedding[0].copy_(row)
            self.end_embedding[0].copy_(row)

    def meta_vector(self, which: int) -> torch.Tensor:
        """The input vector fed for START_THOUGHT or END_THOUGHT, (d,) in the backbone dtype."""
        param = self.start_embedding if which == START_THOUGHT else self.end_embedding
        return (param[0] * self.config.embedding_scale).to(self.dtype)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (...) with START_THOUGHT / END_THOUGHT sentinels -> embeddings (..., d)."""
        x = self.backbone.embed_tokens(ids.clamp(min=0))
        if bool((ids < 0).any()):
            for which in (START_THOUGHT, END_THOUGHT):
                x = torch.where((ids == which)[..., None], self.meta_vector(which), x)
        return x

    def hidden(self, ids: torch.Tensor, positions: torch.Tensor, attention: Attention):
        """ids (B, T) -> final-norm hidden states (B, T, d)."""
        return self.backbone(self.embed(ids), positions, attention)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """W_lm h, fp32, meta-tokens masked (spec §1.3: mask in every sampled distribution)."""
        return self.mask_meta(self.backbone.lm_head(h).float())

    def mix(self, h_base: torch.Tensor, h_post: torch.Tensor):
        """spec §2.3 -> (masked fp32 logits of the blend, w (..., 1))."""
        w = self.mixing_head(h_base, h_post)
        return self.logits(blend(h_base, h_post, w)), w

    def mask_meta(self, logits: torch.Tensor) -> torch.Tensor:
        logits[..., self.masked_token_ids] = float("-inf")
        return logits
