"""Regrouping under DistributedDataParallel: two CPU processes (gloo) apply the same permutation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from badit.adapter.config import BaditConfig
from badit.adapter.layer import BaditLinear
from badit.regrouping import attach_gradient_tracking, plan_regroup, regroup
from badit.regrouping.gradients import gradient_windows

WORLD, K, R = 2, 4, 2


def tiny_model() -> nn.Sequential:
    """Two BADIT layers (32 -> 48 -> 32) with a trainable, non-zero router: identical on every rank."""
    torch.manual_seed(0)
    config = BaditConfig(r=R, num_experts=K, top_k=K, lora_dropout=0.0)
    layers = []
    for i, (n_in, n_out) in enumerate([(32, 48), (48, 32)]):
        base = nn.Linear(n_in, n_out, bias=False).requires_grad_(False)
        layer = BaditLinear(base, "default", config, f"proj{i}")
        nn.init.normal_(layer.badit_router["default"].weight, std=0.5)
        layers.append(layer)
    return nn.Sequential(layers[0], nn.Tanh(), layers[1])


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    x, y = torch.randn(4, 6, 32, generator=generator), torch.randn(4, 6, 32, generator=generator)
    optimizer.zero_grad()
    (model(x) - y).pow(2).mean().backward()
    optimizer.step()


def gathered(tensor: torch.Tensor) -> list[torch.Tensor]:
    out = [torch.empty_like(tensor) for _ in range(WORLD)]
    dist.all_gather(out, tensor.contiguous())
    return out


def worker(rank: int, init_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        check_regroup_under_ddp(rank)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def check_regroup_under_ddp(rank: int) -> None:
    """Train on different data per rank, regroup, and compare the replicas."""
    model = tiny_model()
    attach_gradient_tracking(model)
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.AdamW([p for p in ddp.parameters() if p.requires_grad], lr=1e-2)
    for step in range(3):
        train_step(ddp, optimizer, seed=100 * rank + step)  # different data on each rank

    layers = [model[0], model[2]]
    local = [gradient_windows(layer)["default"].statistics().clone() for layer in layers]
    assert not torch.equal(*gathered(local[0]))  # the ranks saw different gradients
    a0_before = [layer.badit_A0["default"].clone() for layer in layers]

    stats = regroup(ddp, optimizer)

    assert len(stats) == 2
    for layer, window, a0 in zip(layers, local, a0_before, strict=True):
        # The permutation is the one planned from the gradients of both ranks together.
        expected = plan_regroup(sum(gathered(window)).double().numpy(), K, R).perm
        applied = (layer.badit_A0["default"][:, None] == a0[None]).all(-1).float().argmax(1).numpy()
        assert np.array_equal(applied, expected), (applied, expected)
    moved = sum(s["moved"] for s in stats.values())
    assert moved > 0
    for name, param in model.named_parameters():
        replicas = gathered(param.detach())
        assert torch.equal(replicas[0], replicas[1]), name
    train_step(ddp, optimizer, seed=1000 + rank)  # Adam moments moved consistently on both ranks
    for name, param in model.named_parameters():
        replicas = gathered(param.detach())
        assert torch.equal(replicas[0], replicas[1]), name


@pytest.mark.slow
def test_ddp_ranks_apply_the_same_regroup(tmp_path):
    mp.spawn(worker, args=(str(tmp_path / "rendezvous"),), nprocs=WORLD, join=True)
