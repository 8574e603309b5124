"""MixingHead: the official `talk_head` MLP (spec §2).

`[h_base ; h_post] -> hidden -> ReLU -> hidden -> ReLU -> 1`, last layer zero-initialised and no
sigmoid, so w is an unbounded real and w == 0 at initialisation (the base model exactly).
Kept in fp32 whatever the backbone dtype (spec §5.5: "do the matmul in fp32").
"""

from __future__ import annotations

import torch
from torch import nn


class MixingHead(nn.Module):
    def __init__(self, model_dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(2 * model_dim, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 1, bias=False),
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """HF init (N(0, 0.02), zero biases) with the output layer zeroed (spec §2.2)."""
        for module in self.net:
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.zeros_(self.net[4].weight)

    def forward(self, h_base: torch.Tensor, h_post: torch.Tensor) -> torch.Tensor:
        """h_base, h_post (..., d) -> w (..., 1) in fp32."""
        x = torch.cat((h_base, h_post), dim=-1).to(self.net[0].weight.dtype)
        return self.net(x)


def blend(h_base: torch.Tensor, h_post: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """(1 - w) * h_base + w * h_post, in fp32, cast back to the backbone dtype (spec §2.3).

    With w == 0 this returns h_base bit for bit.
    """
    mixed = (1 - w) * h_base.float() + w * h_post.float()
    return mixed.to(h_base.dtype)
