"""Do the routers route? How well each layer's router input and mixing weights tell the tasks apart.

BADIT's idea is that each task is its own combination of basic abilities: the router's mixing weights
are that combination. That needs two things per layer, measured here on one batch per task:

- the **information** is at the router's input: the pooled prompt vectors of different tasks are
  separable (`nearest_centroid_accuracy` of the pooled inputs, and `between_task_share`, the part of
  their spread that is between tasks);
- the router **uses** it: the tasks get different mixtures (`routing_mutual_information` between task
  and expert, 0 when every task gets the same mixture, log K at most), with logits that move
  (`logit_std` across sequences) because the router's weights moved (`router_norm`).

`router_gradient_task_share` decomposes the router's gradient into the part common to all tasks and
the task-specific rest: a router whose gradient is mostly common learns to move every task the same
way (docs/method.md, "Routing").
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from badit.adapter import routing_tasks
from badit.adapter.routing import masked_mean
from badit.analysis.progress import task_bar
from badit.regrouping.gradients import gradient_tracking_paused, is_badit_layer


def nearest_centroid_accuracy(features: torch.Tensor, labels: torch.Tensor) -> float:
    """Leave-one-out accuracy of the nearest class centroid (Euclidean) on features (N, D), labels (N,).

    Sample i is compared with every class centroid, its own class's computed without it; it counts as
    right when its own class is the nearest. A sample alone in its class has no centroid to be compared
    with and counts as wrong. Chance is about 1 / number of classes.
    """
    features = features.double()
    classes, labels = labels.unique(return_inverse=True)
    counts = torch.bincount(labels, minlength=len(classes)).double()  # (C,)
    sums = torch.zeros(len(classes), features.shape[1], dtype=torch.float64).index_add_(0, labels, features)
    distances = torch.cdist(features, sums / counts[:, None]) ** 2  # (N, C), own class not yet left out
    own_count = counts[labels] - 1  # (N,)
    own_centroid = (sums[labels] - features) / own_count.clamp_min(1)[:, None]
    own = ((features - own_centroid) ** 2).sum(-1)
    own = torch.where(own_count > 0, own, torch.full_like(own, math.inf))
    distances = distances.scatter(1, labels[:, None], own[:, None])
    return float((distances.argmin(1) == labels).double().mean())


def between_task_share(features: torch.Tensor, labels: torch.Tensor) -> float:
    """The share of the features' total sum of squares (about their mean) that lies between the task means:
    sum_t n_t |mean_t - mean|^2 / sum_i |x_i - mean|^2, in [0, 1] (R^2 of the task as a predictor).
    0: the tasks' means coincide; 1: every sequence sits on its task's mean."""
    features = features.double()
    _, labels = labels.unique(return_inverse=True)
    counts = torch.bincount(labels).double()
    means = torch.zeros(len(counts), features.shape[1], dtype=torch.float64).index_add_(0, labels, features)
    means = means / counts[:, None]
    centre = features.mean(0)
    total = ((features - centre) ** 2).sum()
    between = (counts * ((means - centre) ** 2).sum(-1)).sum()
    return float(between / total) if total > 0 else 0.0


def common_share(features: torch.Tensor) -> float:
    """The share of the features' mean squared norm that their common mean carries: |mean|^2 / mean |x_i|^2,
    in [0, 1]. Near 1: every sequence's vector is mostly the same vector, and what differs between
    sequences (tasks included) is a small part of what a router multiplies."""
    features = features.double()
    total = (features**2).sum(-1).mean()
    return float((features.mean(0) ** 2).sum() / total) if total > 0 else 0.0


def routing_mutual_information(weights: torch.Tensor, labels: torch.Tensor) -> float:
    """I(task; expert) in nats, with p(expert | task) the mean of the task's mixing weights (N, K)
    (each row normalised to sum to 1) and p(task) its share of the N sequences.

    0 when every task gets the same mixture; log K when each task uses one expert of its own (and
    there are at least K tasks); at most min(log T, log K).
    """
    weights = weights.double()
    weights = weights / weights.sum(-1, keepdim=True).clamp_min(1e-30)
    _, labels = labels.unique(return_inverse=True)
    counts = torch.bincount(labels).double()
    p_task = counts / counts.sum()
    p_expert_given_task = (
        torch.zeros(len(counts), weights.shape[1], dtype=torch.float64).index_add_(0, labels, weights)
        / counts[:, None]
    )
    p_expert = p_task @ p_expert_given_task
    ratio = torch.where(
        p_expert_given_task > 0, p_expert_given_task / p_expert.clamp_min(1e-300), torch.ones(1).double()
    )
    return float((p_task[:, None] * p_expert_given_task * ratio.log()).sum())


def gradient_task_share(gradients: torch.Tensor) -> float | None:
    """The task-specific share of per-task gradients (T, P): sum_t |g_t - mean|^2 / sum_t |g_t|^2, in
    [0, 1]. 0: every task pushes the same way (the common part is all); 1: the task gradients cancel
    on average. None when every gradient is zero (e.g. gate="delta" before anything was learned)."""
    gradients = gradients.double()
    total = (gradients**2).sum()
    if total == 0:
        return None
    return float(((gradients - gradients.mean(0)) ** 2).sum() / total)


def _inputs(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask", "labels")}


def router_separability(
    model: nn.Module,
    batches: Mapping[str, Mapping[str, torch.Tensor]],
    adapter_name: str | None = None,
    progress: str | None = None,
) -> dict:
    """Per BADIT layer, how separable the tasks are at the router's input and in its mixing weights.

    `batches`: task name -> one collated batch (input_ids, attention_mask, labels; `task_ids` for
    oracle-routed adapters). Returns {"tasks", "layers", and per layer (lists in layer order):
    "input_probe_accuracy", "input_between_task_share", "input_common_share", "weights_probe_accuracy",
    "mutual_information", "logit_std", "router_norm", "router_gradient_task_share"} plus
    "max_mutual_information" = min(log T, log K). The model's gradients and regroup windows are left
    as they were.
    """
    layers = {m.layer_name: m for m in model.modules() if is_badit_layer(m)}
    if not layers:
        raise ValueError("router_separability: the model has no BADIT layer")
    names = sorted(layers)
    pooled: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    gates: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    labels: list[torch.Tensor] = []
    router_grads: dict[str, list[torch.Tensor]] = {n: [] for n in names}

    def hook(name):
        def capture(module, args):
            state = module.routing_state
            x = args[0].detach()
            mask = state.prompt_mask if state is not None and x.dim() == 3 else None
            pooled[name].append(masked_mean(x if x.dim() == 3 else x[:, None], mask).float().cpu())

        return capture

    adapter = adapter_name or layers[names[0]].active_adapters[0]
    logits: dict[str, list[torch.Tensor]] = {n: [] for n in names}

    def router_hook(name):
        def capture(_module, _args, output):
            logits[name].append(output.detach().float().cpu())

        return capture

    handles = [layers[n].register_forward_pre_hook(hook(n)) for n in names]
    handles += [layers[n].badit_router[adapter].register_forward_hook(router_hook(n)) for n in names]
    routers = [layers[n].badit_router[adapter].weight for n in names]
    device = routers[0].device
    was_training = model.training
    model.eval()
    try:
        with gradient_tracking_paused(model):
            for index, batch in enumerate(task_bar(batches, progress)):
                with routing_tasks(model, batch.get("task_ids")):
                    loss = model(**_inputs(batch, device)).loss
                for n in names:
                    gates[n].append(layers[n].badit_state[adapter].routing_weights.float().cpu())
                labels.append(torch.full((batch["input_ids"].shape[0],), index))
                trainable = [w for w in routers if w.requires_grad]
                grads = (
                    torch.autograd.grad(loss, trainable, allow_unused=True)
                    if trainable and loss is not None
                    else [None] * len(trainable)
                )
                by_router = dict(zip([id(w) for w in trainable], grads))
                for n, w in zip(names, routers):
                    g = by_router.get(id(w))
                    router_grads[n].append(torch.zeros_like(w) if g is None else g.detach().float())
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()

    task_labels = torch.cat(labels)
    k = routers[0].shape[0]
    result: dict = {
        "tasks": list(batches),
        "layers": names,
        "max_mutual_information": min(math.log(len(batches)), math.log(k)),
    }
    fields = {
        key: []
        for key in (
            "input_probe_accuracy",
            "input_between_task_share",
            "input_common_share",
            "weights_probe_accuracy",
            "mutual_information",
            "logit_std",
            "router_norm",
            "router_gradient_task_share",
        )
    }
    for n, w in zip(names, routers):
        x = torch.cat(pooled[n])
        weights = torch.cat(gates[n])
        fields["input_probe_accuracy"].append(nearest_centroid_accuracy(x, task_labels))
        fields["input_between_task_share"].append(between_task_share(x, task_labels))
        fields["input_common_share"].append(common_share(x))
        fields["weights_probe_accuracy"].append(nearest_centroid_accuracy(weights, task_labels))
        fields["mutual_information"].append(routing_mutual_information(weights, task_labels))
        # the router's logits across sequences (None with oracle routing: its router is never called)
        fields["logit_std"].append(float(torch.cat(logits[n]).std(0).mean()) if logits[n] else None)
        norm = w.detach().float().norm()
        task_logits = layers[n].badit_task_logits
        if adapter in task_logits:
            norm = task_logits[adapter].detach().float().norm()
        fields["router_norm"].append(float(norm))
        grads = torch.stack([g.flatten() for g in router_grads[n]]) if router_grads[n] else None
        fields["router_gradient_task_share"].append(None if grads is None else gradient_task_share(grads))
    result.update(fields)
    return result


# A layer "routes" when its tasks share at least this fraction of the information routing could carry
# (min(log T, log K) nats): 0.05 is about one task in four getting an expert pair weighted 60/40 instead of
# 50/50; the router input "tells tasks apart" at a leave-one-out probe accuracy of 0.9 and above.
ROUTES_FRACTION = 0.05
SEPARABLE_ACCURACY = 0.9


def separability_verdict(separability: Mapping) -> str:
    """One line for a user: do the routers route, and is the information there to route by?"""

    def mean(values):
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else float("nan")

    ceiling = separability["max_mutual_information"]
    share = mean(separability["mutual_information"]) / ceiling if ceiling > 0 else 0.0
    probe = max(separability["input_probe_accuracy"])
    gradient = mean(separability["router_gradient_task_share"])
    facts = (
        f"router inputs tell the tasks apart with probe accuracy up to {probe:.2f}; mixing weights carry "
        f"{share:.1%} of the task information they could (mutual information, mean over layers)"
    )
    if share >= ROUTES_FRACTION:
        return f"the routers route: {facts}"
    common = mean(separability["input_common_share"])
    why = f"; the average sequence carries {common:.0%} of the router input's energy"
    if gradient == gradient:
        why += f", {gradient:.0%} of the router gradient is task-specific"
    if probe >= SEPARABLE_ACCURACY:
        return f"the routers do not route although they could: {facts}{why}"
    return f"the routers do not route, and their inputs barely separate the tasks: {facts}{why}"
