"""Gradient conflict between tasks: cosine similarity of per-task gradients, layer by layer."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from badit.adapter import routing_tasks
from badit.analysis.progress import task_bar
from badit.regrouping.gradients import gradient_tracking_paused


def cosine_matrix(vectors: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Pairwise cosine similarity of the rows of `vectors` (n, d) -> (n, n)."""
    unit = vectors / vectors.norm(dim=-1, keepdim=True).clamp_min(eps)
    return unit @ unit.T


def _layer_of(param_name: str) -> str:
    """Group a parameter under its owning module, named as in the base model.

    'base_model.model.model.layers.0.mlp.gate_proj.badit_A.default' -> 'model.layers.0.mlp.gate_proj'.
    """
    parts = param_name.removeprefix("base_model.model.").split(".")
    for i, part in enumerate(parts):
        if part.startswith(("badit_", "lora_")):
            return ".".join(parts[:i])
    return ".".join(parts[:-1])


def _batch_loss(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "labels")}
    with routing_tasks(model, batch.get("task_ids")):  # oracle-routed adapters (routing="task")
        return model(**inputs).loss


def gradient_conflict(
    model: nn.Module, batches: Mapping[str, Mapping[str, torch.Tensor]], progress: str | None = None
) -> dict[str, torch.Tensor | list[str]]:
    """Per-task gradients of the trainable parameters and their pairwise cosines.

    `batches` maps a task name to one collated batch (input_ids, attention_mask, labels). Returns
    ``{"tasks": names, "layers": layer names, "overall": (T, T), "per_layer": (L, T, T)}`` where
    ``overall`` uses all trainable parameters at once. The model's existing gradients and BADIT's regroup
    gradient windows are left as they were. `progress`: the label of a progress bar over the tasks.
    """
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not params:
        raise ValueError("gradient_conflict: the model has no trainable parameter; attach an adapter first")
    if len(batches) < 2:
        raise ValueError(f"gradient_conflict needs batches of at least 2 tasks, got {len(batches)}")
    layers = sorted({_layer_of(n) for n, _ in params})
    layer_index = torch.tensor([layers.index(_layer_of(n)) for n, _ in params])
    device = params[0][1].device

    flat_grads: list[list[torch.Tensor]] = []  # [task][parameter] -> flattened gradient
    was_training = model.training
    model.eval()  # no dropout: the measurement is deterministic
    try:
        with gradient_tracking_paused(model):  # these gradients are not training signal for regrouping
            for batch in task_bar(batches, progress):
                grads = torch.autograd.grad(  # leaves .grad untouched
                    _batch_loss(model, {k: v.to(device) for k, v in batch.items()}),
                    [p for _, p in params],
                    allow_unused=True,
                )
                flat_grads.append(
                    [
                        torch.zeros_like(p).flatten() if g is None else g.flatten()
                        for g, (_, p) in zip(grads, params)
                    ]
                )
    finally:
        model.train(was_training)

    tasks = list(batches)
    n_tasks = len(tasks)
    # Dot products per parameter, then summed per layer: (P, T, T) -> (L, T, T). No (T, all-params) copy.
    dots = []
    for i in range(len(params)):
        g = torch.stack([flat_grads[t][i] for t in range(n_tasks)]).double()  # (T, numel)
        dots.append(g @ g.T)
    dots = torch.stack(dots)
    per_layer_dots = torch.zeros(len(layers), n_tasks, n_tasks, dtype=torch.float64)
    per_layer_dots.index_add_(0, layer_index, dots.cpu())

    def to_cos(d: torch.Tensor) -> torch.Tensor:
        norms = d.diagonal(dim1=-2, dim2=-1).clamp_min(1e-24).sqrt()
        return (d / (norms.unsqueeze(-1) * norms.unsqueeze(-2))).float()

    return {
        "tasks": tasks,
        "layers": layers,
        "overall": to_cos(per_layer_dots.sum(0)),
        "per_layer": to_cos(per_layer_dots),
    }
