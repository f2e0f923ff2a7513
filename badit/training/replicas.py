"""Check that every data-parallel process ends training with the same adapter.

DDP keeps replicas equal only as long as every rank applies the same update: identical all-reduced
gradients, the same optimizer arithmetic, the same regroup permutations (broadcast from rank 0). A
rank that diverged (a non-deterministic kernel, a regroup planned locally, a state restored from
another rank's file) would go unnoticed, since only rank 0 saves. One broadcast of the trainable
parameters at the end of a stage compares every rank with rank 0 before the adapter is written.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from badit.errors import BaditError


class ReplicaMismatchError(BaditError, RuntimeError):
    """The processes of a distributed run ended training with different adapters."""


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def replica_difference(model: torch.nn.Module) -> float:
    """The largest absolute difference between any rank's trainable parameters and rank 0's (0.0 on
    one process). Collective: every rank must call it. NaN if a rank holds a NaN where rank 0 does not.
    """
    if world_size() < 2:
        return 0.0
    flat = torch.cat([p.detach().reshape(-1).float() for p in model.parameters() if p.requires_grad])
    reference = flat.clone()
    dist.broadcast(reference, src=0)
    difference = (flat - reference).abs()
    # NaN == NaN on both sides counts as equal; a NaN against a number stays NaN (then: not equal)
    both_nan = flat.isnan() & reference.isnan()
    largest = torch.where(both_nan, 0.0, difference).max().reshape(1)
    gathered = [torch.empty_like(largest) for _ in range(world_size())]
    dist.all_gather(gathered, largest)  # all_gather, not MAX: a NaN must survive the reduction
    values = torch.cat(gathered)
    return float("nan") if values.isnan().any() else float(values.max())


def check_replicas(model: torch.nn.Module, where: str) -> float:
    """``replica_difference``, raising ``ReplicaMismatchError`` (naming ``where``) unless it is 0."""
    difference = replica_difference(model)
    if difference != 0.0:
        raise ReplicaMismatchError(
            f"{where}: the {world_size()} processes ended training with different adapters (largest "
            f"difference from rank 0: {difference:.3g}); no adapter written. Please report this with the "
            "launch command (a non-deterministic kernel or a per-rank state can cause it)"
        )
    return difference
