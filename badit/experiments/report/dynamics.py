"""Page sections about training: curves, regrouping, router health, and the `badit analyze` results."""

from __future__ import annotations

import math
import statistics

import numpy as np

from badit.analysis import router_health as health
from badit.experiments.folder import StageFolder, base_method
from badit.experiments.report import figures
from badit.experiments.report.collect import Collection, LogSegment, Run
from badit.experiments.report.page import Section, figure, number, paragraph, table
from badit.experiments.report.runs import natural_key, no_regroup_reason


def _log_file(segment: LogSegment, kind: str):
    return StageFolder(segment.folder).log_file(kind)


def _segment_label(run: Run, segment: LogSegment) -> str:
    return run.label if run.setting == "multitask" else f"{run.label}: {segment.name}"


# The panels of the figures over the optimizer step: {key of the lines: (panel title, y label)}.
CURVE_PANELS = {
    "loss": ("training loss", "loss"),
    "lr": ("learning rate", "learning rate"),
    "tps": ("throughput", "tokens / s"),
}
REGROUP_PANELS = {
    "moved": ("components moved", "components moved"),
    "cosine": ("gradient cosine after regroup", "cosine"),
}
HEALTH_PANELS = {  # the keys are the router log's summary fields
    "entropy": ("routing entropy (mean over layers)", "entropy / log K"),
    "top_share": ("top expert's share (mean over layers)", "share of weight"),
    "min_load": ("smallest expert load (any layer)", "share of weight"),
}


def _step_figure(section: Section, spec: dict, lines: dict[str, list], title: str, alt: str) -> None:
    """One panel per key of ``spec`` (a ``*_PANELS`` table) with ``lines[key]`` over the optimizer step
    (continual stages one after another)."""
    panels = [(name, ylabel, lines[key]) for key, (name, ylabel) in spec.items()]
    section.add(figure(figures.line_panels(panels, "optimizer step", title), alt))


def _curves(run: Run) -> dict[str, list[figures.Line]]:
    """Loss, learning rate and tokens/s lines of a run (continual stages joined, single tasks apart)."""
    out: dict[str, list] = {key: [] for key in CURVE_PANELS}
    joined = run.setting == "continual"
    for segment in run.segments:
        records = [r for r in segment.train if "loss" in r and "step" in r]
        if not records:
            continue
        steps = [r["step"] + segment.offset for r in records]
        label = _segment_label(run, segment)
        out["loss"].append((label, steps, [r["loss"] for r in records]))
        lr = [(s, r["learning_rate"]) for s, r in zip(steps, records) if "learning_rate" in r]
        if lr:
            out["lr"].append((label, [s for s, _ in lr], [v for _, v in lr]))
        # tokens/s between consecutive log records (the Trainer's own field is a running average)
        rate = [
            (s, (b["num_input_tokens_seen"] - a["num_input_tokens_seen"]) / (b["time"] - a["time"]))
            for s, a, b in zip(steps[1:], records, records[1:])
            if b.get("time", 0) > a.get("time", 0)
            and "num_input_tokens_seen" in a
            and "num_input_tokens_seen" in b
        ]
        if rate:
            out["tps"].append((label, [s for s, _ in rate], [v for _, v in rate]))
    if joined:
        for key, lines in out.items():
            if lines:
                out[key] = [
                    (run.label, [x for _, xs, _ in lines for x in xs], [y for _, _, ys in lines for y in ys])
                ]
    return out


def training_section(collection: Collection) -> Section:
    section = Section("Training curves")
    panels = {key: [] for key in CURVE_PANELS}
    for run in collection.runs:
        for key, lines in _curves(run).items():
            panels[key] += lines
        section.source(*(_log_file(s, "train") for s in run.segments if s.train))
    if not panels["loss"]:
        section.add(paragraph("No training log (logs/train_log.jsonl) in these runs.", kind="flag"))
        return section
    continual = (
        " Continual runs: stages one after another on the step axis."
        if any(run.setting == "continual" for run in collection.runs)
        else ""
    )
    section.add(
        paragraph(
            "tokens/s: input tokens between two log records divided by the wall time between them (all "
            "processes together), on the machine each run trained on and beside whatever else ran there: on "
            "a CPU BADIT's extra low-rank passes and routing weigh far more against the base model's "
            "matmuls than on a GPU (docs/benchmarks.md gives the per-step cost against LoRA on both), and "
            f"runs that shared a machine slow each other.{continual}"
        )
    )
    _step_figure(
        section,
        CURVE_PANELS,
        panels,
        "Training curves",
        "training loss, learning rate and tokens per second",
    )
    return section


def _regroup_rows(run: Run) -> list[dict]:
    """Per regroup: step, components moved (all layers), mean intra/inter-expert cosine before and after."""
    rows = []
    for segment in run.segments:
        for record in segment.regroup:
            layers = list((record.get("layers") or {}).values())
            if not layers:
                continue

            def mean(key, layers=layers):
                values = [layer[key] for layer in layers if key in layer]
                return statistics.fmean(values) if values else None

            rows.append(
                {
                    "stage": segment.name,
                    "step": record.get("step", 0) + segment.offset,
                    "moved": sum(layer.get("moved", 0) for layer in layers),
                    "layers": len(layers),
                    **{
                        k: mean(k)
                        for k in (
                            "intra_cosine_before",
                            "intra_cosine",
                            "inter_cosine_before",
                            "inter_cosine",
                        )
                    },
                }
            )
    return rows


def regroup_section(collection: Collection) -> Section | None:
    runs = [(r, _regroup_rows(r)) for r in collection.runs if base_method(r.method) == "badit"]
    if not runs:
        return None
    section = Section("Regrouping over training (BADIT)")
    section.add(
        paragraph(
            "Each regroup clusters the rank-1 components of every layer by gradient direction; moved = components "
            "that changed expert (summed over layers); cosines are means over layers of the mean pairwise gradient "
            "cosine within an expert (intra) and between experts (inter), before -> after the regroup."
        )
    )
    moved, cosines = [], []
    for run, rows in runs:
        section.source(*(_log_file(s, "regroup") for s in run.segments if s.regroup))
        if not rows:
            section.add(paragraph(f"{run.label}: no regroup logged: {no_regroup_reason(run)}.", kind="flag"))
            continue
        table_rows = [
            [
                run.label,
                row["stage"] or "-",
                str(row["step"]),
                str(row["moved"]),
                f"{number(row['intra_cosine_before'])} -> {number(row['intra_cosine'])}",
                f"{number(row['inter_cosine_before'])} -> {number(row['inter_cosine'])}",
            ]
            for row in rows
        ]
        section.add(table(["run", "stage", "step", "moved", "intra cosine", "inter cosine"], table_rows))
        steps = [row["step"] for row in rows]
        moved.append((run.label, steps, [row["moved"] for row in rows]))
        cosines.append((f"{run.label} intra", steps, [row["intra_cosine"] for row in rows]))
        cosines.append((f"{run.label} inter", steps, [row["inter_cosine"] for row in rows]))
    if moved:
        _step_figure(
            section,
            REGROUP_PANELS,
            {"moved": moved, "cosine": cosines},
            "Regrouping over training",
            "components moved and expert cosines per regroup",
        )
    return section


def _health_lines(run: Run) -> dict[str, list]:
    lines = {key: [] for key in HEALTH_PANELS}
    for segment in run.segments:
        records = [r for r in segment.router if "summary" in r]
        if not records:
            continue
        steps = [r["step"] + segment.offset for r in records]
        for key in lines:
            lines[key].append((_segment_label(run, segment), steps, [r["summary"][key] for r in records]))
    return lines


def router_section(collection: Collection) -> Section | None:
    runs = [r for r in collection.runs if base_method(r.method) == "badit"]
    if not runs:
        return None
    section = Section("Router health (BADIT)")
    section.add(
        paragraph(
            f"Flags: an expert is starved when its mean routing weight for a task falls below "
            f"{health.STARVED_LOAD_FRACTION:g}/K; tasks route alike when every pair differs by less than "
            f"{health.ALIKE_TOTAL_VARIATION:g} (total variation) in every layer; collapse = top expert >= "
            f"{health.COLLAPSE_TOP_SHARE:.0%} of the weight in every layer; uniform = weights within "
            f"{health.UNIFORM_DEVIATION:g} of 1/K in every layer. Entropy is divided by log K (1 = uniform)."
        )
    )
    panels = {key: [] for key in HEALTH_PANELS}
    for run in runs:
        for key, lines in _health_lines(run).items():
            panels[key] += lines
        final = [s.router[-1]["layers"] for s in run.segments if s.router and "layers" in s.router[-1]]
        section.source(*(_log_file(s, "router") for s in run.segments if s.router))
        per_task = _per_task_verdict(run)  # from analysis.json: tasks routing alike, starved experts
        for layers in final[-1:]:
            problem = health.routing_problem(layers)
            summary = health.summarize_health(layers)
            text = (
                f"{run.label}, end of training (training batches): entropy {summary['entropy']:.2f}, "
                f"top-expert share {summary['top_share']:.2f}, smallest expert load {summary['min_load']:.2f}"
            )
            if problem:
                verdict, kind = problem, "flag"
            elif per_task:  # not collapsed nor uniform, but the per-task routing says otherwise
                verdict, kind = f"neither collapsed nor uniform, but {per_task}", "flag"
            else:
                verdict = "neither collapsed nor uniform" + (
                    "; tasks route differently (below)" if run.analysis else ""
                )
                kind = "ok"
            section.add(paragraph(f"{text}: {verdict}", kind))
        _usage_blocks(section, run)
    if panels["entropy"]:
        _step_figure(
            section,
            HEALTH_PANELS,
            panels,
            "Router health during training (training batches)",
            "router health during training",
        )
    else:
        section.add(paragraph("No router health log (logs/router_health.jsonl) in these runs."))
    return section


def _usage(run: Run) -> tuple[list[str], list[str], np.ndarray] | None:
    """(tasks, layers in numeric order, usage (L, T, K)) from analysis.json; None without it."""
    usage_info = (run.analysis or {}).get("expert_usage")
    if not usage_info:
        return None
    layers = list(usage_info["layers"])
    usage = np.asarray(usage_info["usage"], dtype=np.float64)  # (L, T, K)
    order = sorted(range(len(layers)), key=lambda i: natural_key(layers[i]))  # 0, 1, 2, ..., 10
    return run.analysis.get("tasks", []), [layers[i] for i in order], usage[order]


def _per_task_verdict(run: Run) -> str | None:
    """The per-task routing problem of analysis.json in words (None: none, or no analysis)."""
    found = _usage(run)
    if found is None:
        return None
    _, _, usage = found
    alike, distance = health.tasks_route_alike(usage)
    if alike:
        return f"every task routes alike (largest distance between two tasks {distance:.3f})"
    starved = health.starved_experts(usage)
    if starved:
        return f"{len(starved)} starved (layer, task, expert) entries"
    return None


def _usage_blocks(section: Section, run: Run) -> None:
    """Routing per task and layer, health per task, and preference similarity from analysis.json."""
    usage_info = (run.analysis or {}).get("expert_usage")
    if not usage_info:
        section.add(paragraph(f"{run.label}: no routing per task (run `badit analyze {run.path}`)."))
        return
    section.source(run.analysis_file)
    tasks, layers, usage = _usage(run)
    k = usage.shape[-1]
    experts = [f"e{i}" for i in range(k)]
    short_layers = [name.removeprefix("base_model.model.").removeprefix("model.") for name in layers]
    # one small heatmap, not one panel per task: what sets each task's mixture apart is its departure from
    # the tasks' mean mixture (panels of near-uniform routing look alike and fill the page)
    departure = (usage - usage.mean(axis=1, keepdims=True)).mean(axis=0)  # (T, K), averaged over layers
    bound = max(float(np.abs(departure).max()), 1e-6)
    uri = figures.heatmap(
        departure.tolist(),
        experts,
        tasks,
        f"{run.label}: each task's routing minus the tasks' mean (mean over {len(layers)} layers)",
        "expert",
        "task",
        "routing weight minus the mean over tasks",
        vmin=-bound,
        vmax=bound,
    )
    section.add(figure(uri, f"routing per task of {run.label}, relative to the mean over tasks"))
    rows = []
    for t, task in enumerate(tasks):
        load = usage[:, t].mean(0)
        entropy = float(-(usage[:, t] * np.log(np.maximum(usage[:, t], 1e-12))).sum(-1).mean() / math.log(k))
        rows.append(
            [
                task,
                " / ".join(f"{v:.2f}" for v in load.tolist()),
                f"{entropy:.2f}",
                f"{float(usage[:, t].max(-1).mean()):.2f}",
            ]
        )
    section.add(
        table(["task", "mean load per expert (over layers)", "entropy of load", "top expert share"], rows)
    )
    starved = health.starved_experts(usage)
    alike, distance = health.tasks_route_alike(usage)
    for layer, task, expert, load in starved[:8]:
        section.add(
            paragraph(
                f"{run.label}: expert e{expert} starved in {short_layers[layer]} for {tasks[task]} (load {load:.3f})",
                "flag",
            )
        )
    if len(starved) > 8:
        section.add(
            paragraph(f"... and {len(starved) - 8} more starved (layer, task, expert) entries", "flag")
        )
    if alike:
        section.add(
            paragraph(f"{run.label}: every task routes alike (largest distance {distance:.3f})", "flag")
        )
    elif not starved:
        section.add(
            paragraph(
                f"{run.label}: no starved expert; tasks route differently (largest distance {distance:.3f})",
                "ok",
            )
        )
    _separability_block(section, run)
    similarity = usage_info.get("similarity")
    if similarity and len(tasks) > 1:
        title = f"{run.label}: expert-preference similarity"
        uri = figures.task_heatmap(similarity, tasks, title, "cosine of preferences", -1.0, 1.0)
        section.add(figure(uri, f"task-by-task expert preference similarity of {run.label}"))


SEPARABILITY_ROWS = {
    "input_probe_accuracy": "router input: task probe accuracy (leave-one-out nearest centroid)",
    "input_common_share": "router input: share of its energy common to every sequence",
    "mutual_information": "mixing weights: mutual information with the task (nats)",
    "logit_std": "router logits: std across sequences",
    "router_norm": "router weights: norm (its update from a zero init)",
    "router_gradient_task_share": "router gradient: task-specific share",
}


def _separability_block(section: Section, run: Run) -> None:
    """Do the routers route (analysis.json's router_separability): the verdict line and a per-layer summary."""
    found = (run.analysis or {}).get("router_separability")
    if not isinstance(found, dict) or not isinstance(found.get("verdict"), str):
        return
    kind = "ok" if found["verdict"].startswith("the routers route") else "flag"
    section.add(paragraph(f"{run.label}: {found['verdict']}", kind))
    rows = []
    for key, label in SEPARABILITY_ROWS.items():
        values = [v for v in found.get(key) or [] if isinstance(v, (int, float)) and math.isfinite(v)]
        if values:
            rows.append([label, *(f"{v:.3f}" for v in (min(values), float(np.median(values)), max(values)))])
    if rows:
        ceiling = found.get("max_mutual_information")
        note = f" (at most {ceiling:.3f} nats here)" if isinstance(ceiling, (int, float)) else ""
        section.add(table([f"per layer{note}", "min", "median", "max"], rows))


def analysis_section(collection: Collection) -> Section | None:
    runs = [r for r in collection.runs if r.analysis]
    section = Section("Gradient conflict and neuron overlap (badit analyze)")
    if not runs:
        section.add(
            paragraph("No run has analysis/analysis.json: run `badit analyze RUN` to add these analyses.")
        )
        return section
    for run in runs:
        section.source(run.analysis_file)
        tasks = run.analysis.get("tasks", [])
        conflict = run.analysis.get("gradient_conflict")
        if conflict:
            pair = conflict.get("most_conflicting_pair") or ["-", "-", float("nan")]
            section.add(
                paragraph(
                    f"{run.label}: mean gradient cosine between tasks {number(conflict.get('mean_offdiag'))}; most "
                    f"conflicting pair {pair[0]} / {pair[1]} ({number(pair[2])}); most conflicting layer "
                    f"{conflict.get('most_conflicting_layer', '-')}"
                )
            )
            title = f"{run.label}: gradient cosine between tasks"
            uri = figures.task_heatmap(conflict["overall"], tasks, title, "cosine", -1.0, 1.0)
            section.add(figure(uri, f"gradient conflict of {run.label}"))
        neurons = run.analysis.get("neuron_overlap")
        if neurons:
            title = f"{run.label}: top-{neurons.get('top_fraction', 0):.0%} neuron overlap"
            uri = figures.task_heatmap(neurons["mean_jaccard"], tasks, title, "Jaccard overlap", 0.0, 1.0)
            section.add(figure(uri, f"neuron overlap of {run.label}"))
    return section
