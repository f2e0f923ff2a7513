"""Make every data-parallel rank apply the same regroup.

Each rank's gradient windows hold its local gradients (the hooks fire before DDP averages them), so
they are summed over ranks first; rank 0's permutations are then broadcast, so all ranks permute
identically even if floating-point reductions or the assignment solver ever disagreed across
processes. Two collectives per regroup, whatever the number of layers.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum_(tensors: list[torch.Tensor]) -> None:
    """Sum same-device tensors over all ranks, in place, with one collective."""
    if not tensors or not is_distributed():
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    for tensor, reduced in zip(tensors, flat.split([t.numel() for t in tensors]), strict=True):
        tensor.copy_(reduced.view_as(tensor))


def broadcast_from_rank0(perms: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Every rank receives rank 0's permutations (int64, one collective)."""
    if not perms or not is_distributed():
        return perms
    flat = torch.cat(perms).to(device)
    dist.broadcast(flat, src=0)
    return [p.cpu() for p in flat.split([len(p) for p in perms])]
