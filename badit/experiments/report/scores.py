"""Scores for the report: runs grouped by method (seeds together), and the interference score.

All values are computed from the runs' ``metrics.json`` over the tasks every run shares, so that
columns compare like with like; the page names the files and the tasks left out.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

from badit.evaluation import interference_score
from badit.experiments.folder import base_method
from badit.experiments.report.collect import Collection, Run
from badit.names import METRICS


@dataclass
class Group:
    """The runs of one method, setting, model, learning rate and evaluation split (several seeds, or one run).

    ``mean``/``std``: task -> metric -> value over the runs (std: sample standard deviation over
    seeds, None with one run); the ``"average"`` entry is the mean over the shared tasks.
    """

    label: str
    method: str
    setting: str
    model: str
    runs: list[Run]
    mean: dict[str, dict[str, float]] = field(default_factory=dict)
    std: dict[str, dict[str, float | None]] = field(default_factory=dict)

    @property
    def files(self) -> list[Path]:
        return [r.metrics_file for r in self.runs]


def _spread(values: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


DETAILS = (
    lambda key: Path(key[2]).name,  # model
    lambda key: f"lr {key[3]:g}" if isinstance(key[3], (int, float)) else "lr ?",
    lambda key: f"{key[4]} split",
)


def _labels(keys: list[tuple]) -> dict[tuple, str]:
    """``method (setting)``, then the model, learning rate and split added where they tell groups apart."""
    labels = {key: f"{key[0]} ({key[1]})" for key in keys}
    for detail in DETAILS:
        values: dict[str, set[str]] = {}
        for key, label in labels.items():
            values.setdefault(label, set()).add(detail(key))
        labels = {
            key: f"{label} {detail(key)}" if len(values[label]) > 1 else label
            for key, label in labels.items()
        }
    return labels


def group_runs(collection: Collection) -> list[Group]:
    """One group per (method, setting, model, learning rate, split), in the order runs were given;
    labels ``method (setting)`` get the model, then the learning rate and split, where two would be equal."""
    groups: dict[tuple, Group] = {}
    for run in collection.runs:
        key = (run.method, run.setting, run.model, run.learning_rate, run.split)
        if key not in groups:
            groups[key] = Group(f"{run.method} ({run.setting})", *key[:3], runs=[])
        groups[key].runs.append(run)
    for key, label in _labels(list(groups)).items():
        groups[key].label = label
    tasks = collection.shared_tasks
    for group in groups.values():
        for metric in METRICS:
            rows = {t: [r.tasks[t][metric] for r in group.runs] for t in tasks}
            rows["average"] = [statistics.fmean(r.tasks[t][metric] for t in tasks) for r in group.runs]
            for task, values in rows.items():
                mean, std = _spread(values)
                group.mean.setdefault(task, {})[metric] = mean
                group.std.setdefault(task, {})[metric] = std
    return list(groups.values())


@dataclass
class Interference:
    """A multi-task group against a single-task group: per-task differences and their mean (negative =
    training the tasks together costs performance), as ``badit.evaluation.interference_score``."""

    group: Group
    reference: Group
    per_task: dict[str, dict[str, float]]  # task -> metric -> multi - single
    average: dict[str, float]  # metric -> interference score


def interference(groups: list[Group], tasks: list[str]) -> list[Interference]:
    """The interference of every multitask group that has a single-task group of the same model
    (the same method preferred, as in ``badit compare``)."""
    out = []
    for group in groups:
        if group.setting != "multitask":
            continue
        split = group.runs[0].split
        candidates = [
            g for g in groups if g.setting == "single" and g.model == group.model and g.runs[0].split == split
        ]
        candidates.sort(key=lambda g: base_method(g.method) != base_method(group.method))
        if not candidates:
            continue
        ref = candidates[0]
        per_task = {t: {m: group.mean[t][m] - ref.mean[t][m] for m in METRICS} for t in tasks}
        average = {
            m: interference_score({t: group.mean[t][m] for t in tasks}, {t: ref.mean[t][m] for t in tasks})
            for m in METRICS
        }
        out.append(Interference(group, ref, per_task, average))
    return out


def missing_references(groups: list[Group], found: list[Interference]) -> list[str]:
    """Labels of the multitask groups with no single-task reference among the runs."""
    have = {i.group.label for i in found}
    return [g.label for g in groups if g.setting == "multitask" and g.label not in have]
