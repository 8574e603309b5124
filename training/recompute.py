"""`--activation-checkpointing`: every decoder layer keeps only its input and recomputes its
internals in backward (torch.utils.checkpoint, non-reentrant).

One step runs each layer 1 + (n_ahead - 2) + n_ahead_talk times (spec §3.3), and every call's
attention scores and MLP activations would otherwise stay alive until backward. The thought
tokens' keys/values stay stored either way (later passes attend to them); the core's
ParallelThoughtAttention makes a recomputed call repeat its first run exactly.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def checkpoint_layers(backbone: nn.Module) -> None:
    """Wrap each layer's forward in place (module tree and parameter names unchanged, so state
    dicts, LoRA hooks and fully_shard see the same model)."""
    for layer in backbone.layers:
        layer.forward = _recomputed(layer.forward)


def _recomputed(forward: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    def run(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attention) -> torch.Tensor:
        # the layer draws no random numbers, so the RNG state need not be replayed
        return checkpoint(
            forward, x, cos, sin, attention, use_reentrant=False, preserve_rng_state=False
        )

    return run
