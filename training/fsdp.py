"""`quietstar train --fsdp`: FSDP2 (`fully_shard`) with settings for Quiet-STaR's unrolled step.

`fully_shard` is called directly inside the process group that `accelerate launch` (or torchrun)
set up, not through accelerate's FullyShardedDataParallelPlugin(fsdp_version=2): accelerate turns
the plugin on only for GPU process types (a CPU launch stays MULTI_CPU, plain DDP), so the plugin
path could never run in the CPU tests; this one code path runs on gloo and on NCCL alike.

Settings (training/README.md, "Sharded training"): every decoder layer is its own unit and the
root unit holds embeddings, LM head, meta vectors, mixing head and LoRA factors. One training step
calls every layer 1 + (n_ahead - 2) + n_ahead_talk times (spec §3.3), so parameters stay gathered
after forward (`reshard_after_forward=False`): one all-gather per layer per step instead of one per
call, paid for with the full bf16 weights resident from forward to backward. With bf16 compute,
parameters are all-gathered in bf16 and gradients reduced in fp32 onto fp32 shards (master
weights and AdamW states fp32, spec §3.7).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn


def shard(objective: nn.Module, compute_dtype: torch.dtype, device: torch.device) -> None:
    """fully_shard each decoder layer, then the objective (the root); in place, params -> DTensor."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    policy = MixedPrecisionPolicy()  # fp32 compute: all-gather and reduce in the weights' fp32
    if compute_dtype != torch.float32:
        policy = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
    for layer in objective.model.backbone.layers:
        fully_shard(layer, mesh=mesh, reshard_after_forward=False, mp_policy=policy)
    fully_shard(objective, mesh=mesh, reshard_after_forward=False, mp_policy=policy)
    # A unit's post-backward hook fires once per call, the first time while earlier calls
    # still need the weights (the thought keys/values reach them outside the call's output).
    # Kept gathered, those calls find them; the step reshards after backward (`reshard`).
    objective.set_reshard_after_backward(False)


def reshard(objective: nn.Module) -> None:
    """Free every unit's gathered weights (after backward, before the optimizer updates the
    shards: a unit still gathered would run its next forward on the old weights)."""
    for m in fsdp_modules(objective):
        m.reshard()


def fsdp_modules(module: nn.Module) -> list[nn.Module]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in module.modules() if isinstance(m, FSDPModule)]


@contextlib.contextmanager
def gathered(objective: nn.Module) -> Iterator[None]:
    """Inside: every unit's full parameters (compute dtype) are registered, so the plain model
    methods run (held-out evaluation). Collective: every process must enter."""
    modules = fsdp_modules(objective)
    for m in modules:
        m.unshard()
    try:
        yield
    finally:
        for m in modules:
            m.reshard()


def clip_grad_norm_(params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """Global L2 norm of the sharded gradients (sum of squares over local shards, all-reduced),
    then every shard scaled by min(1, max_norm / norm), as torch.nn.utils.clip_grad_norm_ does."""
    grads = [p.grad for p in params if p.grad is not None]
    local = [g.to_local() if hasattr(g, "to_local") else g for g in grads]
    squares = torch.zeros((), dtype=torch.float32, device=params[0].device)
    for g in local:
        squares += g.detach().float().pow(2).sum()
    dist.all_reduce(squares)
    norm = squares.sqrt()
    scale = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    for g in local:
        g.detach().mul_(scale.to(g.dtype))
    return norm


def full_state_dict(objective: nn.Module) -> dict[str, torch.Tensor]:
    """The gathered fp32 parameters on rank 0 (CPU), {} elsewhere. Collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(objective, options=options)


@contextlib.contextmanager
def swapped_in(module: nn.Module, state: dict[str, torch.Tensor]) -> Iterator[None]:
    """Inside: `module`'s parameters are the full tensors of `state` (tied ones stay tied), so
    code that reads a plain model (the checkpoint writer, LoRA merging) runs unchanged; the
    sharded parameters are registered again on exit. Rank 0 only: no collectives."""
    originals: list[tuple[nn.Module, str, nn.Parameter]] = []
    replacement: dict[int, nn.Parameter] = {}
    for name, param in module.named_parameters(remove_duplicate=False):
        owner_name, _, attr = name.rpartition(".")
        owner = module.get_submodule(owner_name)
        if id(param) not in replacement:
            replacement[id(param)] = nn.Parameter(state[name], requires_grad=False)
        originals.append((owner, attr, param))
    try:
        for owner, attr, param in originals:
            owner._parameters[attr] = replacement[id(param)]
        yield
    finally:
        for owner, attr, param in originals:
            owner._parameters[attr] = param
