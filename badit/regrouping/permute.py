"""Apply a component permutation to a BADIT layer and to everything indexed by component."""

from __future__ import annotations

import torch
from torch import nn

from badit.regrouping.gradients import gradient_windows

# Packed factors of a BaditLinear and the dimension that indexes rank-1 components.
COMPONENT_DIM = {"badit_A": 0, "badit_B": 1, "badit_A0": 0, "badit_B0": 1}


class UnsupportedOptimizerState(RuntimeError):
    """An optimizer keeps state for an adapter factor that cannot be permuted component-wise."""


def check_not_sharded(model: nn.Module) -> None:
    """Refuse backends whose adapter weights are sharded: a permutation needs whole rows and columns."""
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch built without distributed support: isinstance(x, ()) is always False
        FullyShardedDataParallel = DTensor = ()

    hint = (
        "regrouping permutes whole rows of badit_A and columns of badit_B and needs unsharded adapter "
        "weights on every process: use DistributedDataParallel or DeepSpeed ZeRO-1/2 instead, or set "
        "regroup=False in the BaditConfig (the SVD-MoE ablation)."
    )
    for name, param in model.named_parameters():
        if "badit_" not in name:
            continue
        if hasattr(param, "ds_id") or hasattr(param, "ds_numel"):
            raise RuntimeError(f"badit.regroup: {name} is partitioned by DeepSpeed ZeRO-3; {hint}")
        if isinstance(param, DTensor):
            raise RuntimeError(
                f"badit.regroup: {name} is a sharded DTensor (FSDP2 / tensor parallel); {hint}"
            )
    if any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
        raise RuntimeError(f"badit.regroup: the model is wrapped in FullyShardedDataParallel; {hint}")


def _permute_(tensor: torch.Tensor, dim: int, perm: torch.Tensor) -> None:
    with torch.no_grad():  # in place: optimizers, DDP buckets and views keep pointing at the same memory
        tensor.copy_(tensor.index_select(dim, perm.to(tensor.device)))


def _permute_optimizer_state_(optimizer: torch.optim.Optimizer, param: nn.Parameter, dim: int, perm) -> None:
    """Permute every per-element state tensor (Adam's exp_avg / exp_avg_sq, SGD's momentum_buffer...)."""
    for key, value in optimizer.state.get(param, {}).items():
        if not torch.is_tensor(value) or value.numel() == 1:  # step counters and scalars
            continue
        if value.shape != param.shape:
            raise UnsupportedOptimizerState(
                f"badit.regroup: optimizer {type(optimizer).__name__} keeps state {key!r} of shape "
                f"{tuple(value.shape)} for a parameter of shape {tuple(param.shape)} (factored or quantised "
                "state), which cannot be permuted component by component. Use an optimizer with "
                "element-wise state (AdamW, Adam, SGD) or set regroup=False."
            )
        _permute_(value, dim, perm)


def _permute_deepspeed_master_(param: nn.Parameter, dim: int, perm: torch.Tensor) -> None:
    """DeepSpeed ZeRO-1/2 and its bf16 optimizer keep fp32 partitions of the weight and of Adam's moments.

    Permuting only the low-precision parameter would be overwritten from the master copy at the next
    step (the public BADIT code's bug), so the master copy and moments are permuted through DeepSpeed's
    public helpers. These are collectives: every rank must call them in the same order, which it does
    since all ranks regroup the same layers. Untested here (DeepSpeed is not a dependency of badit).
    """
    from deepspeed.utils import (
        safe_get_full_fp32_param,
        safe_get_full_optimizer_state,
        safe_set_full_fp32_param,
        safe_set_full_optimizer_state,
    )

    master = safe_get_full_fp32_param(param)
    safe_set_full_fp32_param(param, master.index_select(dim, perm.to(master.device)))
    for key in ("exp_avg", "exp_avg_sq"):  # the moments of DeepSpeed's Adam implementations
        state = safe_get_full_optimizer_state(param, key)
        if state is not None:
            safe_set_full_optimizer_state(param, state.index_select(dim, perm.to(state.device)), key)


def permute_components(
    layer: nn.Module, adapter_name: str, perm: torch.Tensor, optimizer: torch.optim.Optimizer | None = None
) -> None:
    """New component j = old component perm[j] for one adapter of one layer.

    Moves the rows of A and A0, the columns of B and B0, their `.grad`, the optimizer state of A and
    B, and the gradient window. The residual W - scaling * B0 @ A0 is unchanged because A0 and B0
    move together.
    """
    window = gradient_windows(layer).get(adapter_name)
    if window is not None:
        window.permute_(perm)
    for attr, dim in COMPONENT_DIM.items():
        factors = getattr(layer, attr, None)
        if factors is None or adapter_name not in factors:
            continue
        tensor = factors[adapter_name]
        _permute_(tensor, dim, perm)
        if not isinstance(tensor, nn.Parameter):
            continue
        if tensor.grad is not None:
            _permute_(tensor.grad, dim, perm)
        if hasattr(tensor, "_hp_mapping"):
            _permute_deepspeed_master_(tensor, dim, perm)
        if optimizer is not None:
            _permute_optimizer_state_(optimizer, tensor, dim, perm)
