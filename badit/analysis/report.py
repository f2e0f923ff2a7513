"""One call that measures interference and writes `analysis.json` plus heatmaps into a folder."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from badit.analysis.coactivation import expert_usage, neuron_overlap
from badit.analysis.conflict import gradient_conflict
from badit.analysis.plots import heatmap_figure, printable_texts, pyplot, short_label
from badit.analysis.separability import router_separability, separability_verdict
from badit.data.files import atomic_write_json
from badit.regrouping.gradients import is_badit_layer


def _has_badit_layers(model: nn.Module) -> bool:
    return any(is_badit_layer(m) for m in model.modules())


def _heatmap(matrix: torch.Tensor, labels_x, labels_y, title: str, path: Path, vmin=None, vmax=None) -> None:
    """`badit.analysis.plots.heatmap_figure` written to ``path`` (a temp file renamed: never half an image)."""
    fig = heatmap_figure(matrix.tolist(), labels_x, labels_y, title, vmin=vmin, vmax=vmax)
    tmp = path.with_name(f".{path.name}.tmp.png")
    printable_texts(fig)
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    pyplot().close(fig)
    os.replace(tmp, path)


def analyze(
    model: nn.Module,
    batches: Mapping[str, Mapping[str, torch.Tensor]],
    output_dir: str | os.PathLike,
    neuron_module_suffix: str = "down_proj",
    neuron_top_fraction: float = 0.01,
    progress: bool = False,
    result_name: str = "analysis.json",
) -> dict:
    """Measure gradient conflict, expert usage and router separability (BADIT models: do the routers tell
    the tasks apart? `badit.analysis.separability`) and neuron overlap between tasks.

    Writes the result (JSON, named `result_name`) and PNG heatmaps into `output_dir` and returns the
    JSON-ready dict.
    `progress`: show a progress bar per measurement (one step per task).
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tasks = list(batches)
    short = [short_label(t, 24) for t in tasks]
    result: dict = {"tasks": tasks}

    conflict = gradient_conflict(model, batches, "gradients" if progress else None)
    off = ~torch.eye(len(tasks), dtype=torch.bool)
    per_layer_mean = torch.stack([c[off].mean() for c in conflict["per_layer"]])
    worst = torch.argmin(torch.where(off, conflict["overall"], torch.inf))
    a, b = divmod(int(worst), len(tasks))
    result["gradient_conflict"] = {
        "overall": conflict["overall"].tolist(),
        "layers": conflict["layers"],
        "per_layer_mean_offdiag": per_layer_mean.tolist(),
        "mean_offdiag": float(conflict["overall"][off].mean()),
        "most_conflicting_pair": [tasks[a], tasks[b], float(conflict["overall"][a, b])],
        "most_conflicting_layer": conflict["layers"][int(per_layer_mean.argmin())],
    }
    _heatmap(
        conflict["overall"],
        short,
        short,
        "gradient cosine between tasks",
        out / "gradient_conflict.png",
        -1,
        1,
    )

    if _has_badit_layers(model):
        usage = expert_usage(model, batches, "expert usage" if progress else None)
        result["expert_usage"] = {
            "layers": usage["layers"],
            "usage": usage["usage"].tolist(),
            "similarity": usage["similarity"].tolist(),
            "max_deviation_from_uniform": usage["max_deviation"],
        }
        mean_usage = usage["usage"].mean(0)  # (T, K)
        experts = [f"e{k}" for k in range(mean_usage.shape[1])]
        _heatmap(mean_usage, experts, short, "mean routing weight per task", out / "expert_usage.png")
        separability = router_separability(model, batches, progress="separability" if progress else None)
        separability["verdict"] = separability_verdict(separability)
        result["router_separability"] = separability

    neurons = neuron_overlap(
        model, batches, neuron_module_suffix, neuron_top_fraction, "neurons" if progress else None
    )
    result["neuron_overlap"] = {
        "top_fraction": neuron_top_fraction,
        "mean_jaccard": neurons["mean_jaccard"].tolist(),
        "mean_offdiag": float(neurons["mean_jaccard"][off].mean()),
    }
    _heatmap(
        neurons["mean_jaccard"], short, short, "top-neuron Jaccard overlap", out / "neuron_overlap.png", 0, 1
    )

    atomic_write_json(out / result_name, result)
    return result
