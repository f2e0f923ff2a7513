"""Which experts and which MLP neurons do different tasks use?

Expert co-activation reads the per-sequence routing weights a BADIT model records on every
forward; neuron co-activation hooks the input of the MLP down-projection (the activated
intermediate neurons, as in the task-specific-neuron literature the BADIT paper compares with).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from badit.adapter import get_routing_weights, routing_tasks
from badit.analysis.conflict import cosine_matrix
from badit.analysis.progress import task_bar


def _forward(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> None:
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask", "labels")}
    with routing_tasks(model, batch.get("task_ids")):  # oracle-routed adapters (routing="task")
        model(**inputs)


@torch.no_grad()
def expert_usage(
    model: nn.Module, batches: Mapping[str, Mapping[str, torch.Tensor]], progress: str | None = None
) -> dict:
    """Mean routing weight of each expert per task and layer, normalised to sum to 1.

    Returns ``{"tasks", "layers", "usage": (L, T, K), "similarity": (T, T), "max_deviation": float}``.
    ``similarity`` is the cosine between the tasks' preferences over all layers, i.e. their usage
    minus the uniform 1/K (1 = the same experts favoured, -1 = opposite ones, 0 when a task routes
    uniformly); ``max_deviation`` is the largest |usage - 1/K|, how far routing is from uniform at all.
    `progress`: the label of a progress bar over the tasks (None: no bar).
    """
    was_training = model.training
    model.eval()
    per_task = []
    try:
        for batch in task_bar(batches, progress):
            _forward(model, batch)
            weights = get_routing_weights(model)
            if not weights:
                raise ValueError("expert_usage: the model has no BADIT layer (no routing weights recorded)")
            layers = sorted(weights)
            mean = torch.stack([weights[name].float().mean(0) for name in layers])  # (L, K)
            per_task.append(mean / mean.sum(-1, keepdim=True).clamp_min(1e-12))
    finally:
        model.train(was_training)
    usage = torch.stack(per_task, dim=1).cpu()  # (L, T, K)
    preference = usage - 1.0 / usage.shape[-1]
    profiles = preference.permute(1, 0, 2).reshape(usage.shape[1], -1)
    return {
        "tasks": list(batches),
        "layers": layers,
        "usage": usage,
        "similarity": cosine_matrix(profiles),
        "max_deviation": float(preference.abs().max()),
    }


def top_fraction_jaccard(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """Jaccard overlap between tasks' top-`fraction` neurons.

    `scores` is (L, T, N): a score per layer, task and neuron. For every layer the ceil(fraction*N)
    highest-scoring neurons of each task form a set; the result (L, T, T) holds |S_a ∩ S_b| / |S_a ∪ S_b|.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    n = scores.shape[-1]
    k = max(1, int(torch.tensor(fraction * n).ceil().item()))
    top = scores.topk(k, dim=-1).indices
    member = torch.zeros_like(scores, dtype=torch.float32).scatter_(-1, top, 1.0)  # (L, T, N) 0/1
    inter = member @ member.transpose(-1, -2)
    union = 2 * k - inter
    return inter / union


@torch.no_grad()
def neuron_overlap(
    model: nn.Module,
    batches: Mapping[str, Mapping[str, torch.Tensor]],
    module_suffix: str = "down_proj",
    top_fraction: float = 0.01,
    progress: str | None = None,
) -> dict:
    """Overlap of the most active intermediate MLP neurons between tasks.

    A neuron's score for a task is its mean absolute activation over the task's attended tokens,
    taken at the input of every module whose name ends with `module_suffix`. Returns
    ``{"tasks", "layers", "jaccard": (L, T, T), "mean_jaccard": (T, T)}``. `progress`: as `expert_usage`.
    """
    modules = {name: m for name, m in model.named_modules() if name.endswith(module_suffix)}
    if not modules:
        raise ValueError(
            f"neuron_overlap: no module name ends with {module_suffix!r}; pass module_suffix= for this architecture"
        )
    layers = sorted(modules)
    current: dict[str, torch.Tensor] = {}
    mask_holder: dict[str, torch.Tensor] = {}

    def make_hook(name: str):
        def hook(_module, args):
            x = args[0].detach().abs().float()  # (B, T, N)
            mask = mask_holder["mask"].to(x.device, x.dtype).unsqueeze(-1)
            current[name] = (x * mask).sum((0, 1)) / mask.sum().clamp_min(1.0)

        return hook

    handles = [modules[name].register_forward_pre_hook(make_hook(name)) for name in layers]
    was_training = model.training
    model.eval()
    per_task = []
    try:
        for batch in task_bar(batches, progress):
            ids = batch["input_ids"]
            mask_holder["mask"] = batch.get("attention_mask", torch.ones_like(ids))
            _forward(model, batch)
            per_task.append(torch.stack([current[name].cpu() for name in layers]))  # (L, N)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    jaccard = top_fraction_jaccard(torch.stack(per_task, dim=1), top_fraction)
    return {"tasks": list(batches), "layers": layers, "jaccard": jaccard, "mean_jaccard": jaccard.mean(0)}
