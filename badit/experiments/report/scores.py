"""Scores for the report: runs grouped by method (seeds together), and the interference score.

All values are computed from the runs' ``metrics.json`` over the tasks every run shares, so that
columns compare like with like; the page names the files and the tasks left out.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

from badit.evaluation import interference_score
from badit.experiments.report.collect import Collection, Run

METRICS = {"rougeL": "ROUGE-L", "exact_match": "EM"}


@dataclass
class Group:
    """The runs of one method, setting and model (several seeds, or one run).

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


def group_runs(collection: Collection) -> list[Group]:
    """One group per (method, setting, model), in the order runs were given."""
    groups: dict[tuple[str, str, str], Group] = {}
    for run in collection.runs:
        key = (run.method, run.setting, run.model)
        if key not in groups:
            groups[key] = Group(f"{run.method} ({run.setting})", *key, runs=[])
        groups[key].runs.append(run)
    labels = [g.label for g in groups.values()]
    for group in groups.values():
        if labels.count(group.label) > 1:
            group.label = f"{group.label} {Path(group.model).name}"
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
        candidates = [g for g in groups if g.setting == "single" and g.model == group.model]
        candidates.sort(key=lambda g: g.method != group.method)
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
