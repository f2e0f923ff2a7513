"""Gradient surgery between tasks: PCGrad (Yu et al., "Gradient Surgery for Multi-Task Learning",
NeurIPS 2020, arXiv 2001.06782), ``training.gradient_surgery: pcgrad``.

Each optimizer step, every task present in the batch gets its own gradient g_t of the adapter's
trainable parameters (one backward pass per task, on that task's sequences). PCGrad then, for each
task i, walks the other tasks j in a random order and, whenever the (already projected) g_i points
against g_j, removes g_i's component along g_j:

    g_i <- g_i - (g_i . g_j / ||g_j||^2) g_j      if g_i . g_j < 0      (Algorithm 1 of the paper)

and the update direction is the sum of the projected g_i. The projection uses the other tasks'
*original* gradients, as Algorithm 1 and the authors' code do.

Written here because no maintained library offers PCGrad over a ``transformers.Trainer``: the surgery
is a few lines of tensor algebra (`project_conflicting`), the rest is the per-task bookkeeping
(`TaskGradients`). The Trainer side is `badit.training.trainer.BaditTrainer`.

Scale: g_t is the gradient of task t's share of the ordinary batch loss (its tokens' loss summed and
divided by the batch's label tokens, as the batch loss is), so sum_t g_t is exactly the ordinary
gradient and, when no pair conflicts, a PCGrad step is the ordinary step (same effective step scale).
The paper sums equally weighted task losses instead; since the projection is linear in g_i and
ignores the length of g_j, the two differ only by this per-task weight (docs/method.md, "PCGrad").
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch


def project_conflicting(grads: torch.Tensor, orders: Sequence[Sequence[int]]) -> torch.Tensor:
    """PCGrad's combined update of ``grads`` (T, P): the sum over tasks i of g_i projected, in the order
    ``orders[i]`` (the other tasks' indices), onto the normal plane of every g_j it conflicts with.

    Vectorised over the P parameters; the loop is over the T * (T - 1) task pairs only (T is the
    number of tasks in a batch, a handful). A zero g_j never conflicts (its dot product is 0).
    Returns a (P,) tensor in ``grads``' dtype.
    """
    if grads.dim() != 2:
        raise ValueError(f"grads must be (tasks, parameters), got shape {tuple(grads.shape)}")
    original = grads.float()
    squared_norms = (original * original).sum(dim=1)
    projected = original.clone()
    for i, order in enumerate(orders):
        g_i = projected[i]
        for j in order:
            if j == i:
                continue
            dot = torch.dot(g_i, original[j])
            # torch.where keeps this on the device (no .item() synchronisation per pair)
            coefficient = torch.where(dot < 0, dot / squared_norms[j].clamp_min(1e-30), 0.0)
            g_i.sub_(coefficient * original[j])
    return projected.sum(dim=0).to(grads.dtype)


def random_orders(num_tasks: int, rng: random.Random) -> list[list[int]]:
    """For each task, the other tasks in a uniformly random order (the paper samples j at random)."""
    return [rng.sample([j for j in range(num_tasks) if j != i], num_tasks - 1) for i in range(num_tasks)]


class TaskGradients:
    """The per-task gradients of one optimizer step, flattened over ``params`` (kept across the
    micro-batches of gradient accumulation, so the surgery sees each task's whole-step gradient)."""

    def __init__(self, params: Sequence[torch.nn.Parameter]):
        self.params = list(params)
        self.by_task: dict[int, torch.Tensor] = {}

    def add_from_grad(self, task: int) -> None:
        """Move the parameters' ``.grad`` (one task's backward pass) into task ``task``'s sum."""
        flat = torch.cat(
            [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float() for p in self.params]
        )
        for p in self.params:
            p.grad = None
        if task in self.by_task:
            self.by_task[task].add_(flat)
        else:
            self.by_task[task] = flat

    def write_surgery(self, rng: random.Random) -> int:
        """Set every parameter's ``.grad`` to PCGrad's combination of the tasks gathered, then forget
        them. Returns the number of tasks combined."""
        tasks = sorted(self.by_task)
        if not tasks:
            return 0
        grads = torch.stack([self.by_task[t] for t in tasks])
        combined = project_conflicting(grads, random_orders(len(tasks), rng))
        offset = 0
        for p in self.params:
            n = p.numel()
            p.grad = combined[offset : offset + n].view_as(p).to(p.dtype)
            offset += n
        self.by_task = {}
        return len(tasks)
