"""Router health: is the router of a BADIT layer using its experts, and differently per input?

Two failure modes matter (see docs/method.md, "Router health"):

- **collapse**: one expert takes nearly all the weight, the others stop being trained through the
  router; BADIT then degrades to a single LoRA of rank r;
- **never left uniform**: the router (initialised to zero, i.e. uniform weights) never learnt to
  prefer any expert, so the mixture is one fixed adapter of rank K*r for every input.

Routing weights are per sequence, (batch, K); with router_scale="preserve" they sum to K, so every
function here first normalises each row to sum to 1.

The measurements of a live model (`normalise`, `layer_health`, `model_health`) take torch tensors and
use only their methods; the verdicts on logged or analysed numbers (`summarize_health`,
`routing_problem`, `starved_experts`, `tasks_route_alike`) use numpy. The module itself imports no
torch, so that `badit report` renders its verdicts without it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

# Collapse: the top expert's mean share of the weight in a layer. 0.9 = the other K-1 experts together
# get less than a tenth, "nearly all weight" in the words.
COLLAPSE_TOP_SHARE = 0.9
# Uniform: the mean over sequences of max_k |w_k - 1/K|. The zero-initialised router gives exactly 0;
# 0.01 (one percentage point) is below anything a learnt preference produces on the tiny and demo runs.
UNIFORM_DEVIATION = 0.01
# A starved expert gets less than a quarter of its fair share 1/K of the weight.
STARVED_LOAD_FRACTION = 0.25
# Tasks route alike when, in every layer, any two tasks' expert loads differ by less than 0.02 in total
# variation distance (half the L1 distance, 0..1).
ALIKE_TOTAL_VARIATION = 0.02


def normalise(weights: torch.Tensor) -> torch.Tensor:
    """Rows of `weights` (..., K) scaled to sum to 1 (rows of zeros stay zero)."""
    weights = weights.float()
    return weights / weights.sum(-1, keepdim=True).clamp_min(1e-12)


def layer_health(weights: torch.Tensor) -> dict[str, float | list[float]]:
    """Health of one layer from its per-sequence weights (batch, K).

    - ``load`` (K,): mean share of each expert over the sequences (sums to 1);
    - ``entropy``: mean over sequences of the weight entropy divided by log K (1 = uniform, 0 = one expert);
    - ``top_share``: the largest entry of ``load``;
    - ``deviation``: mean over sequences of max_k |w_k - 1/K| (0 = uniform routing).
    """
    w = normalise(weights)
    k = w.shape[-1]
    entropy = -(w * w.clamp_min(1e-12).log()).sum(-1) / math.log(k) if k > 1 else w.new_zeros(w.shape[0])
    load = w.mean(0)
    return {
        "load": load.tolist(),
        "entropy": float(entropy.mean()),
        "top_share": float(load.max()),
        "deviation": float((w - 1.0 / k).abs().amax(-1).mean()),
    }


def model_health(routing_weights: Mapping[str, torch.Tensor]) -> dict[str, dict]:
    """``layer_health`` of every layer of ``badit.get_routing_weights(model)`` (layer name -> (batch, K))."""
    return {name: layer_health(w) for name, w in sorted(routing_weights.items())}


def summarize_health(layers: Mapping[str, Mapping]) -> dict[str, float]:
    """Means over layers of entropy, top share and deviation, and the smallest load of any expert."""
    if not layers:
        return {}
    values = list(layers.values())
    return {
        "entropy": sum(v["entropy"] for v in values) / len(values),
        "top_share": sum(v["top_share"] for v in values) / len(values),
        "deviation": sum(v["deviation"] for v in values) / len(values),
        "min_load": min(min(v["load"]) for v in values),
    }


def routing_problem(layers: Mapping[str, Mapping]) -> str | None:
    """A one-line description of a collapse or still-uniform router over all `layers`, else None.

    Collapse: the top expert holds at least COLLAPSE_TOP_SHARE of the weight in every layer.
    Uniform: the routing deviates less than UNIFORM_DEVIATION from uniform in every layer.
    """
    if not layers:
        return None
    values = list(layers.values())
    if all(v["top_share"] >= COLLAPSE_TOP_SHARE for v in values):
        lowest = min(v["top_share"] for v in values)
        return (
            f"routing collapsed: one expert takes at least {lowest:.0%} of the weight in every one of "
            f"the {len(values)} layers"
        )
    if all(v["deviation"] < UNIFORM_DEVIATION for v in values):
        return (
            f"routing never left uniform: in all {len(values)} layers the weights stay within "
            f"{UNIFORM_DEVIATION:.2f} of 1/K (router not learning: raise training.learning_rate, the steps, or method.router_lr_multiplier)"
        )
    return None


def starved_experts(usage: np.ndarray) -> list[tuple[int, int, int, float]]:
    """(layer, task, expert, load) where an expert's load is below STARVED_LOAD_FRACTION / K.

    `usage` (L, T, K): mean routing weight per layer, task and expert, rows summing to 1
    (``analysis.json``'s ``expert_usage.usage``); any array-like (nested lists, a CPU tensor).
    """
    usage = np.asarray(usage, dtype=np.float64)
    k = usage.shape[-1]
    low = np.argwhere(usage < STARVED_LOAD_FRACTION / k).tolist()
    return [(a, b, c, float(usage[a, b, c])) for a, b, c in low]


def tasks_route_alike(usage: np.ndarray) -> tuple[bool, float]:
    """(alike, largest distance): whether every pair of tasks has total-variation distance below
    ALIKE_TOTAL_VARIATION in every layer; `usage` (L, T, K) as in ``starved_experts``."""
    usage = np.asarray(usage, dtype=np.float64)
    if usage.shape[1] < 2:
        return False, float("nan")
    distance = 0.5 * np.abs(usage[:, :, None, :] - usage[:, None, :, :]).sum(-1)  # (L, T, T)
    largest = float(distance.max())
    return largest < ALIKE_TOTAL_VARIATION, largest
