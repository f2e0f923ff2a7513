"""Page sections about scores: per-task scores, interference, continual learning (from metrics.json)."""

from __future__ import annotations

from badit.experiments.report import figures
from badit.experiments.report.collect import Collection
from badit.experiments.report.page import Section, figure, number, paragraph, table
from badit.experiments.results import (
    AVERAGE,
    Group,
    difference_note,
    difference_rows,
    interferences,
    reference_differences,
)
from badit.names import METRICS


def scores_section(collection: Collection, groups: list[Group]) -> Section:
    section = Section("Scores per task")
    tasks = collection.shared_tasks
    section.add(
        paragraph(
            "Each cell: the score (mean ± sample standard deviation over the seeds when there are several) "
            "and its 95% interval over seeds and test examples (seed-paired t interval with both variance "
            "components, badit.evaluation.statistics); n = test examples of the row, seeds in each column's "
            "header. No interval where a run has no predictions.jsonl, its seeds were scored on different "
            "examples, or a task has fewer than 2 examples."
        )
    )
    differences = reference_differences(groups, tasks)
    if differences:
        section.add(paragraph(difference_note(differences)))
    for metric, name in METRICS.items():
        header = [
            f"task ({name})",
            *(f"{g.label} ({g.counted})" for g in groups),
        ]
        rows = []
        for t in [*tasks, AVERAGE]:
            intervals = [g.interval(t, metric, tasks) for g in groups]
            counts = {i.examples for i in intervals if i is not None}
            n = f" (n={counts.pop()})" if len(counts) == 1 else ""
            cells = [
                g.score(t, metric, tasks).text()
                + (f" {i.text()}" + ("" if n else f" n={i.examples}") if i else "")
                for g, i in zip(groups, intervals)
            ]
            rows.append([f"{t}{n}", *cells])
        rows += difference_rows(groups, differences, metric)
        section.add(table(header, rows))
    for metric, name in METRICS.items():
        bars, kinds = {}, set()
        for g in groups:  # the 95% interval where there is one, else the std over seeds
            values, errors = [], []
            for t in [*tasks, AVERAGE]:
                score, interval = g.score(t, metric, tasks), g.interval(t, metric, tasks)
                values.append(score.mean)
                errors.append((interval.low, interval.high) if interval else score.std)
                kinds.add("interval" if interval else "std" if score.std else None)
            bars[g.label] = (values, errors)
        what = {"interval": "95% interval over seeds and examples", "std": "std over seeds"}
        shown = [what[k] for k in ("interval", "std") if k in kinds]
        title = f"{name} per task" + (f" (error bars: {'; '.join(shown)})" if shown else "")
        section.add(
            figure(figures.grouped_bars([*tasks, AVERAGE], bars, title, name), f"{name} per task and method")
        )
    section.add(paragraph("'average' is the mean over the tasks shared by all runs."))
    for g in groups:  # a 0.00 is an answer, not a missing bar: say where its cause is looked for
        for t in tasks:
            if g.score(t, "rougeL", tasks).mean == 0:
                section.add(
                    paragraph(
                        f"{g.label} scores 0.00 ROUGE-L on {t}: its answers are under 'Predictions'; whether its "
                        "tasks route alike under 'Routing' (each task's routing relative to the others); which "
                        "pair of tasks' gradients conflict most under 'Interference analysis'.",
                        kind="flag",
                    )
                )
    if collection.left_out:
        for label, tasks_out in collection.left_out.items():
            section.add(
                paragraph(f"{label}: left out (not in every run): {', '.join(tasks_out)}", kind="flag")
            )
    section.source(*(f for g in groups for f in g.files))
    return section


def interference_section(collection: Collection, groups: list[Group]) -> Section:
    from badit.evaluation.statistics import POWER, RESOLVABLE, describe_resolvable  # numpy, scipy: lazily

    section = Section("Interference (multi-task minus single-task)")
    found = interferences(groups, collection.shared_tasks)
    section.add(
        paragraph(
            "Score of the multi-task adapter minus that of one adapter per task (setting single) on the same "
            "task; negative = training the tasks together costs performance. Interference "
            f"{RESOLVABLE}"
        )
    )
    for metric, name in METRICS.items():
        if not found:
            break
        header = [f"task ({name})", *(f"{i.group.label} vs {i.reference.label}" for i in found)]
        rows = [[t, *(number(i.per_task[t][metric]) for i in found)] for t in collection.shared_tasks]
        rows.append(["interference score (mean)", *(number(i.average[metric]) for i in found)])
        rows.append(
            [f"resolvable ({POWER:.0%} power)", *(describe_resolvable(i.paired(metric)) for i in found)]
        )
        section.add(table(header, rows))
    if found:
        bars = {
            f"{i.group.label}": (
                [i.per_task[t]["rougeL"] for t in collection.shared_tasks],
                [None] * len(collection.shared_tasks),
            )
            for i in found
        }
        section.add(
            figure(
                figures.grouped_bars(
                    collection.shared_tasks, bars, "Interference per task (ROUGE-L)", "multi - single ROUGE-L"
                ),
                "interference per task",
            )
        )
    have = {i.group.label for i in found}
    for label in [g.label for g in groups if g.setting == "multitask" and g.label not in have]:
        section.add(
            paragraph(
                f"No interference score for {label}: add a run with setting=single (one adapter per task) "
                "on the same tasks and model.",
                kind="flag",
            )
        )
    section.source(*(f for i in found for g in (i.group, i.reference) for f in g.files))
    return section


def continual_section(collection: Collection) -> Section | None:
    runs = [r for r in collection.runs if r.continual]
    if not runs:
        return None
    section = Section("Continual learning")
    section.add(
        paragraph(
            "Score matrix: row = after training stage i, column = task j (ROUGE-L). AP: mean of the last row; "
            "forgetting: mean drop from a task's best score since it was learnt to its final score; "
            "BWT: backward transfer over T tasks; FWT: mean diagonal minus mean single-task score "
            "(needs a single-task run; `badit compare` fills it in). These are SAPT's definitions "
            "(the SuperNI continual literature); GEM's (BWT over T-1 tasks, zero-shot FWT against the "
            "untrained adapter) are in metrics.json as BWT_gem, FWT_gem, forgetting_gem."
        )
    )
    header = ["run", *(f"{k} ({n})" for n in METRICS.values() for k in ("AP", "forgetting", "BWT", "FWT"))]
    rows = [
        [
            r.label,
            *(
                number((r.continual.get(m) or {}).get(k))
                for m in METRICS
                for k in ("AP", "forgetting", "BWT", "FWT")
            ),
        ]
        for r in runs
    ]
    section.add(table(header, rows))
    for run in runs:
        order = run.continual.get("order") or sorted(run.tasks)
        matrix = (run.continual.get("score_matrix") or {}).get("rougeL")
        if not matrix:
            section.add(paragraph(f"{run.label}: no score matrix in its metrics.json", kind="flag"))
            continue
        stages = [f"{i}: {t}" for i, t in enumerate(order[: len(matrix)])]
        uri = figures.heatmap(
            matrix,
            order,
            stages,
            f"{run.label}: ROUGE-L after each stage",
            "evaluated task",
            "after stage",
            "ROUGE-L (0-100)",
            vmin=0.0,
            vmax=100.0,
        )
        section.add(figure(uri, f"score matrix of {run.label}"))
        section.source(run.metrics_file)
    return section
