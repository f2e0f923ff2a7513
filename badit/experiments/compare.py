"""``badit compare RUN...``: a table of runs (methods) by task, with averages and the interference score.

The interference score of a multi-task run is its average score minus the average score of a
single-task run (one adapter per task) over the same tasks (``badit.evaluation.interference_score``):
negative means that training the tasks together costs performance. The single-task reference is
taken among the runs given, preferring one of the same method and model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from badit.evaluation import continual_metrics, interference_score
from badit.evaluation.continual import CONTINUAL_KEYS, DEFINITIONS, GEM_KEYS
from badit.experiments.folder import METRIC_NAMES, RunError, RunFolder, base_method, format_score


@dataclass
class RunScores:
    path: Path
    name: str
    method: str
    setting: str
    model: str
    tasks: dict[str, dict[str, float]]
    average: dict[str, float]
    continual: dict | None = None
    label: str = ""
    interference: dict[str, float | None] = field(default_factory=dict)
    reference: str | None = None
    learning_rate: float | None = None
    effective_scale: float | None = None
    """Multiplier of one rank-1 component's output at init (``badit.training.methods.effective_scale``)."""


def load_run_scores(run_dir: str | Path) -> RunScores:
    metrics = RunFolder(run_dir).metrics()
    info = metrics.get("run") if isinstance(metrics.get("run"), dict) else {}
    return RunScores(
        path=Path(run_dir),
        name=str(info.get("name", Path(run_dir).name)),
        method=str(info.get("method", "?")),
        setting=str(info.get("setting", "?")),
        model=str(info.get("model", "?")),
        tasks=metrics["tasks"],
        average=metrics["average"],
        continual=metrics.get("continual"),
        learning_rate=info.get("learning_rate") if _is_number(info.get("learning_rate")) else None,
        effective_scale=info.get("effective_scale") if _is_number(info.get("effective_scale")) else None,
    )


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _label(runs: list[RunScores]) -> None:
    """Column labels: ``method (setting)``, with the run folder name where two would be equal."""
    base = [f"{r.method} ({r.setting})" for r in runs]
    for run, label in zip(runs, base):
        run.label = label if base.count(label) == 1 else f"{label} {run.path.name}"


def _single_reference(run: RunScores, runs: list[RunScores]) -> RunScores | None:
    candidates = [
        r for r in runs if r.setting == "single" and r.model == run.model and set(run.tasks) <= set(r.tasks)
    ]
    candidates.sort(key=lambda r: base_method(r.method) != base_method(run.method))  # same method first
    return candidates[0] if candidates else None


def compare(run_dirs: list[str | Path]) -> list[RunScores]:
    """The runs' scores, labelled, with the interference score of each multi-task run and the FWT of
    each continual run (SAPT's: mean diagonal minus mean single-task score) filled in."""
    if not run_dirs:
        raise RunError("give at least one run folder")
    runs = [load_run_scores(d) for d in run_dirs]
    _label(runs)
    for run in runs:
        if run.setting == "continual" and run.continual:
            _continual_with_single(run, runs)
        if run.setting != "multitask":
            continue
        reference = _single_reference(run, runs)
        if reference is None:
            continue
        run.reference = reference.label
        for metric in METRIC_NAMES:
            multi = {t: s[metric] for t, s in run.tasks.items()}
            single = {t: reference.tasks[t][metric] for t in run.tasks}
            run.interference[metric] = interference_score(multi, single)
    return runs


def _continual_with_single(run: RunScores, runs: list[RunScores]) -> None:
    """Recomputes a continual run's metrics from its score matrix (so that a metrics.json written before
    the SAPT/GEM split reads the same), with the single-task scores of a run among ``runs`` for FWT."""
    order, matrices = run.continual.get("order"), run.continual.get("score_matrix")
    if not isinstance(order, list) or not isinstance(matrices, dict):
        return
    reference = _single_reference(run, runs)
    if reference is not None and not set(order) <= set(reference.tasks):
        reference = None
    bases = run.continual.get("base_scores") or {}
    run.reference = reference.label if reference else None
    for metric in METRIC_NAMES:
        if metric in matrices:
            single = [reference.tasks[t][metric] for t in order] if reference else None
            run.continual[metric] = continual_metrics(matrices[metric], bases.get(metric), single)


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def format_table(runs: list[RunScores], metric: str = "rougeL") -> str:
    """Markdown: one row per task, one column per run; average, interference and continual rows."""
    if metric not in METRIC_NAMES:
        raise ValueError(f"metric must be one of {', '.join(METRIC_NAMES)}, got {metric!r}")
    tasks = sorted({t for r in runs for t in r.tasks})
    header = [f"task ({METRIC_NAMES[metric]})", *(r.label for r in runs)]
    rows = [
        [t, *(format_score(r.tasks[t][metric], "-") if t in r.tasks else "-" for r in runs)] for t in tasks
    ]
    rows.append(["**average**", *(f"**{r.average[metric]:.2f}**" for r in runs)])
    if any(r.interference for r in runs):
        rows.append(
            ["interference vs single", *(format_score(r.interference.get(metric), "-") for r in runs)]
        )
    # The step size of each run: a learning rate or scale mismatch between columns is visible here.
    if any(r.learning_rate is not None for r in runs):
        rows.append(["learning rate", *(_num(r.learning_rate, "g") for r in runs)])
    if any(r.effective_scale is not None for r in runs):
        rows.append(["effective scale", *(_num(r.effective_scale, ".3g") for r in runs)])
    if any(r.continual for r in runs):
        for key in CONTINUAL_KEYS + GEM_KEYS:
            rows.append(
                [
                    key,
                    *(format_score(r.continual[metric].get(key), "-") if r.continual else "-" for r in runs),
                ]
            )
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]

    def line(cells):
        return (
            "| "
            + " | ".join(
                str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
            )
            + " |"
        )

    separator = (
        "|"
        + "|".join(("-" * (w + 2)) if i == 0 else ("-" * (w + 1) + ":") for i, w in enumerate(widths))
        + "|"
    )
    out = [line(header), separator, *(line(row) for row in rows)]
    notes = [
        f"{r.label}: interference = its average minus that of {r.reference} over the same tasks"
        if r.setting == "multitask"
        else f"{r.label}: FWT against the single-task scores of {r.reference}"
        for r in runs
        if r.reference
    ]
    if any(r.continual for r in runs):
        notes.append(f"continual metrics: {DEFINITIONS}")
    missing = [r.label for r in runs if r.setting == "multitask" and not r.reference]
    if missing:
        notes.append(
            f"no interference score for {', '.join(missing)}: add a run with setting=single "
            "(one adapter per task) on the same tasks and model"
        )
    return "\n".join(out + ([""] + notes if notes else [])) + "\n"


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
            "learning_rate": r.learning_rate,
            "effective_scale": r.effective_scale,
            "continual": r.continual,
        }
        for r in runs
    }
