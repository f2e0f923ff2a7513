"""``badit compare RUN...``: a table of runs (methods) by task, with averages and the interference score.

The interference score of a multi-task run is its average score minus the average score of a
single-task run (one adapter per task) over the same tasks (``badit.evaluation.interference_score``):
negative means that training the tasks together costs performance. The single-task reference is
taken among the runs given, preferring one of the same method and model. Where the runs, grouped by
seed, give two groups of one setting that share a seed, a second table shows each group's average
and its paired difference against the reference group (`badit.experiments.results.reference_differences`).
Every number comes from the results model (``badit.experiments.results``); this module chooses the rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from badit.evaluation import continual_metrics
from badit.evaluation.continual import CONTINUAL_KEYS, DEFINITIONS, GEM_KEYS
from badit.experiments.folder import METRIC_NAMES
from badit.experiments.results import (
    AVERAGE,
    Difference,
    Group,
    Interference,
    RunResult,
    Table,
    difference_note,
    difference_rows,
    interference,
    interferences,
    load_runs,
    number,
    reference_differences,
    run_groups,
    seed_groups,
    single_reference,
)


@dataclass
class RunScores:
    """One column of the comparison: a run, its interference score (multi-task runs) and the label of the
    single-task run it was measured against; ``measured``: that comparison in the results model (its
    paired interval and smallest resolvable difference, `Interference.paired`); ``seed_group``: the group
    of seeds the run belongs to and ``versus`` that group's paired difference against the reference group
    of its setting (None for the reference, and where no groups pair: `reference_differences`)."""

    run: RunResult
    interference: dict[str, float | None] = field(default_factory=dict)
    reference: str | None = None
    measured: Interference | None = None
    seed_group: Group | None = None
    versus: Difference | None = None

    def __getattr__(self, name):  # path, label, method, setting, tasks, average, continual...: the run's
        return getattr(self.__dict__["run"], name)


def compare(run_dirs: list[str | Path]) -> list[RunScores]:
    """The runs' scores, labelled, with the interference score of each multi-task run and the FWT of
    each continual run (SAPT's: mean diagonal minus mean single-task score) filled in."""
    runs = load_runs(run_dirs)
    groups = run_groups(runs)
    out = [RunScores(run) for run in runs]
    for scores, group in zip(out, groups):
        if scores.setting == "continual" and scores.continual:
            _continual_with_single(scores, group, groups)
        if scores.setting != "multitask":
            continue
        reference = single_reference(group, groups)
        if reference is not None:
            scores.reference = reference.label
            scores.measured = interference(group, reference)
            scores.interference = scores.measured.average
    by_seed, by_run = seed_groups(runs), {id(s.run): s for s in out}
    versus = {id(d.group): d for d in reference_differences(by_seed)}
    for group in by_seed:
        for run in group.runs:
            by_run[id(run)].seed_group, by_run[id(run)].versus = group, versus.get(id(group))
    return out


def _continual_with_single(scores: RunScores, group: Group, groups: list[Group]) -> None:
    """Recomputes a continual run's metrics from its score matrix (so that a metrics.json written before
    the SAPT/GEM split reads the same), with the single-task scores of a run among ``groups`` for FWT."""
    continual = scores.continual
    order, matrices = continual.get("order"), continual.get("score_matrix")
    if not isinstance(order, list) or not isinstance(matrices, dict):
        return
    reference = single_reference(group, groups, order)
    bases = continual.get("base_scores") or {}
    scores.reference = reference.label if reference else None
    for metric in METRIC_NAMES:
        if metric in matrices:
            single = [reference.score(t, metric).mean for t in order] if reference else None
            continual[metric] = continual_metrics(matrices[metric], bases.get(metric), single)


def comparison_table(runs: list[RunScores], metric: str = "rougeL") -> Table:
    """One row per task, one column per run; average, interference, step size and continual rows."""
    from badit.evaluation.statistics import POWER, RESOLVABLE, describe_resolvable  # numpy, scipy: lazily

    if metric not in METRIC_NAMES:
        raise ValueError(f"metric must be one of {', '.join(METRIC_NAMES)}, got {metric!r}")
    tasks = sorted({t for r in runs for t in r.tasks})
    header = [f"task ({METRIC_NAMES[metric]})", *(r.label for r in runs)]
    rows = [[t, *(number(r.tasks[t][metric]) if t in r.tasks else "-" for r in runs)] for t in tasks]
    rows.append([AVERAGE, *(number(r.average[metric]) for r in runs)])
    strong = {len(rows) - 1}
    if any(r.interference for r in runs):
        rows.append(["interference vs single", *(number(r.interference.get(metric)) for r in runs)])
        rows.append(
            [
                f"interference resolvable ({POWER:.0%} power)",
                *(describe_resolvable(r.measured.paired(metric) if r.measured else None) for r in runs),
            ]
        )
    # The step size of each run: a learning rate or scale mismatch between columns is visible here.
    if any(r.learning_rate is not None for r in runs):
        rows.append(["learning rate", *(number(r.learning_rate, "g") for r in runs)])
    if any(r.effective_scale is not None for r in runs):
        rows.append(["effective scale", *(number(r.effective_scale, ".3g") for r in runs)])
    if any(r.continual for r in runs):
        for key in CONTINUAL_KEYS + GEM_KEYS:
            rows.append([key, *(number(r.continual[metric].get(key)) if r.continual else "-" for r in runs)])
    notes = [
        f"{r.label}: interference = its average minus that of {r.reference} over the same tasks"
        if r.setting == "multitask"
        else f"{r.label}: FWT against the single-task scores of {r.reference}"
        for r in runs
        if r.reference
    ]
    if any(r.interference for r in runs):
        notes.append(f"interference {RESOLVABLE}")
    if any(r.continual for r in runs):
        notes.append(f"continual metrics: {DEFINITIONS}")
    missing = [r.label for r in runs if r.setting == "multitask" and not r.reference]
    if missing:
        notes.append(
            f"no interference score for {', '.join(missing)}: add a run with setting=single "
            "(one adapter per task) on the same tasks and model"
        )
    return Table(header, rows, strong=strong, notes=notes)


def seed_group_table(runs: list[RunScores], metric: str = "rougeL") -> Table | None:
    """One column per group of seeds: its average (mean ± std over seeds), its paired difference against
    the reference group of its setting (`difference_rows`) and, for a multi-task group with a single-task
    group beside it, its interference paired by seed and example (`Interference.paired`); None where no
    groups pair and no group of several seeds has a single-task reference."""
    from badit.evaluation.statistics import describe  # numpy, scipy: lazily

    differences = list({id(r.versus): r.versus for r in runs if r.versus}.values())
    groups = list({id(r.seed_group): r.seed_group for r in runs if r.seed_group}.values())
    measured = {id(i.group): i for i in interferences(groups)}
    if not differences and not any(len(i.group.runs) > 1 for i in measured.values()):
        return None
    header = [
        f"seed groups ({METRIC_NAMES[metric]})",
        *(f"{g.label} ({g.counted})" for g in groups),
    ]
    rows = [[AVERAGE, *(g.score(AVERAGE, metric).text() for g in groups)]]
    rows += difference_rows(groups, differences, metric)
    notes = [difference_note(differences)] if differences else []
    if measured:
        cells = []
        for group in groups:
            paired = measured[id(group)].paired(metric) if id(group) in measured else None
            cells.append(describe(paired) if paired else "-" if id(group) in measured else "")
        rows.append(["interference vs single, 95% CI", *cells])
        notes += [
            f"{i.group.label}: interference = its average minus that of {i.reference.label}, paired by seed "
            "and example (negative: training the tasks together costs)"
            for i in measured.values()
        ]
    return Table(header, rows, strong={0}, notes=notes)


def format_table(runs: list[RunScores], metric: str = "rougeL") -> str:
    """The comparison as aligned Markdown (what ``badit compare`` prints and writes), with the table of
    seed groups under it where groups pair (`seed_group_table`)."""
    text = comparison_table(runs, metric).terminal()
    groups = seed_group_table(runs, metric)
    return text if groups is None else f"{text}\n{groups.terminal()}"


def comparison_json(runs: list[RunScores]) -> dict:
    return {
        r.label: {
            "path": str(r.path),
            "method": r.method,
            "setting": r.setting,
            "model": r.model,
            "tasks": r.tasks,
            "average": r.average,
            "interference": r.interference or None,
            "interference_reference": r.reference,
            "interference_interval": (
                {m: r.measured.paired(m) for m in METRIC_NAMES} if r.measured else None
            ),
            "difference_vs_reference": (
                {
                    "group": r.versus.group.label,
                    "reference": r.versus.reference.label,
                    "tasks": r.versus.tasks,
                    **{m: r.versus.paired(m) for m in METRIC_NAMES},
                }
                if r.versus
                else None
            ),
            "learning_rate": r.learning_rate,
            "effective_scale": r.effective_scale,
            "continual": r.continual,
        }
        for r in runs
    }
