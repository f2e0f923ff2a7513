"""`regroup(model, optimizer)`: one regroup of every tracked BADIT layer, now."""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from badit.regrouping.distributed import all_reduce_sum_, broadcast_from_rank0
from badit.regrouping.gradients import (
    GradientWindow,
    find_adapter_config,
    gradient_windows,
    iter_badit_layers,
    layer_key,
)
from badit.regrouping.permute import check_not_sharded, permute_components
from badit.regrouping.plan import grouping_stats, plan_regroup, random_plan

logger = logging.getLogger(__name__)

DEFAULT_KMEANS_ITERS = 20
"""k-means iterations for layers whose model carries no BaditConfig (BaditConfig's own default)."""


@torch.no_grad()
def regroup(
    model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *, kmeans_iters: int | None = None
) -> dict[str, dict[str, float]]:
    """Regroup the rank-1 components of every tracked BADIT layer by gradient direction, now.

    Uses the gradients gathered since the last regroup by `attach_gradient_tracking` (installed when
    the BADIT model is built), permutes each layer's components so that each expert holds one cluster
    of the balanced spherical k-means (clusters matched to experts so that few components move), moves
    the optimizer state with them (pass the optimizer!) and starts a new gradient window.

    Under torch.distributed every rank must call it at the same point; all ranks apply the same
    permutations. Layers with no gradient in the window are left as they are.

    Returns {`layer_key` (the layer name as in `badit.get_routing_weights`, ".<adapter>" appended unless
    "default"): statistics} (see `badit.regrouping.plan.grouping_stats`; `*_before` entries describe
    the grouping before this regroup).
    """
    check_not_sharded(model)
    tracked: list[tuple[str, nn.Module, str, GradientWindow]] = [
        (layer_name, layer, adapter_name, window)
        for layer_name, layer in iter_badit_layers(model)
        for adapter_name, window in gradient_windows(layer).items()
    ]
    if not tracked:
        logger.warning("badit.regroup: no tracked BADIT layer (was attach_gradient_tracking called?)")
        return {}
    signals = [window.statistics() for *_, window in tracked]
    all_reduce_sum_(signals)

    iters_of: dict[str, int] = {}
    signed_of: dict[str, bool] = {}
    random_of: dict[str, bool] = {}
    perms: list[torch.Tensor] = []
    plans: list[tuple[np.ndarray, dict[str, float]] | None] = []  # directions and plan statistics
    for (_, layer, adapter_name, _), signal in zip(tracked, signals, strict=True):
        state = layer.badit_state[adapter_name]
        num_experts, size = state.num_experts, state.r
        directions = signal.cpu().numpy().astype(np.float64)  # numpy from here: tiny, single-threaded
        if num_experts < 2 or not directions.any():
            perms.append(torch.arange(num_experts * size))
            plans.append(None)
            continue
        if adapter_name not in iters_of:
            config = find_adapter_config(model, adapter_name)
            iters_of[adapter_name] = kmeans_iters or (
                config.regroup_kmeans_iters if config is not None else DEFAULT_KMEANS_ITERS
            )
            signed_of[adapter_name] = getattr(config, "regroup_similarity", None) == "signed"
            random_of[adapter_name] = getattr(config, "regroup_assignment", None) == "random"
        if random_of[adapter_name]:  # the control: a random permutation, not the gradient clusters
            plan = random_plan(directions, num_experts, size, signed_of[adapter_name])
        else:
            plan = plan_regroup(
                directions,
                num_experts,
                size,
                kmeans_iters=iters_of[adapter_name],
                signed=signed_of[adapter_name],
            )
        perms.append(torch.from_numpy(plan.perm))
        plans.append((directions, plan.stats))
    perms = broadcast_from_rank0(perms, device=signals[0].device)

    stats: dict[str, dict[str, float]] = {}
    for (layer_name, layer, adapter_name, window), perm, plan in zip(tracked, perms, plans, strict=True):
        if not torch.equal(perm, torch.arange(len(perm))):
            permute_components(layer, adapter_name, perm, optimizer)
        window.reset()
        if plan is None:
            continue
        directions, plan_stats = plan
        # Recomputed from the permutation actually applied (rank 0's), so every rank reports the same.
        final = grouping_stats(
            directions,
            perm.numpy(),
            layer.badit_state[adapter_name].num_experts,  # duck-typed: badit.adapter.layer.AdapterState
            layer.badit_state[adapter_name].r,
            signed_of[adapter_name],
        )
        stats[layer_key(getattr(layer, "layer_name", layer_name), adapter_name)] = {**plan_stats, **final}
    skipped = len(tracked) - len(stats)
    if skipped:
        logger.info(
            "badit.regroup: %d adapter layer(s) had no gradient since the last regroup; unchanged", skipped
        )
    return stats


def regroup_summary(stats: dict[str, dict[str, float]]) -> dict[str, float]:
    """Means over layers of the per-layer statistics of one regroup (`moved` is summed), for logging."""
    if not stats:
        return {}
    keys = next(iter(stats.values())).keys()
    summary = {key: float(np.mean([layer[key] for layer in stats.values()])) for key in keys}
    summary["moved"] = float(sum(layer["moved"] for layer in stats.values()))
    summary["layers"] = float(len(stats))
    return summary
