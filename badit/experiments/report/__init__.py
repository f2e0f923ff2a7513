"""``badit report RUN [RUN ...]``: one self-contained HTML page comparing runs.

collect (read run folders) -> the results model (``badit.experiments.results``: groups of seeds,
interference) -> sections / dynamics (tables and figures) -> page (HTML). Every number on the page is read from, or computed from, files in the
run folders; each section lists those files.
"""

from __future__ import annotations

from pathlib import Path

from badit.experiments.report.collect import ReportError, collect

__all__ = ["ReportError", "build_report", "collect", "write_report"]


def build_report(inputs: list[str | Path], title: str = "badit report") -> str:
    """The HTML page for the run folders (or folders of runs) in `inputs`; ReportError on bad input."""
    from tqdm.auto import tqdm

    from badit.experiments.report import dynamics, runs, sections
    from badit.experiments.report.page import render
    from badit.experiments.results import seed_groups

    collection = collect(inputs)
    groups = seed_groups(collection.runs)
    intro = [
        f"{len(collection.runs)} run(s): " + "; ".join(f"{r.label} = {r.path}" for r in collection.runs),
        f"Tasks compared ({len(collection.shared_tasks)}): {', '.join(collection.shared_tasks)}.",
        _setup_line(collection.runs),
        *_headlines(groups, collection.shared_tasks),
    ]
    if collection.left_out:
        intro.append(
            "Left out (not in every run): "
            + "; ".join(f"{label}: {', '.join(tasks)}" for label, tasks in collection.left_out.items())
        )
    builders = [
        lambda: runs.settings_section(collection),
        lambda: sections.scores_section(collection, groups),
        lambda: runs.predictions_section(collection),
        lambda: sections.interference_section(collection, groups),
        lambda: sections.continual_section(collection),
        lambda: dynamics.training_section(collection),
        lambda: dynamics.regroup_section(collection),
        lambda: dynamics.router_section(collection),
        lambda: dynamics.analysis_section(collection),
    ]
    # a bar over the sections (their figures are most of the time), shown only after 2 s
    parts = [build() for build in tqdm(builders, desc="report", unit="section", delay=2, leave=False)]
    return render(title, intro, [p for p in parts if p is not None])


def _headlines(groups, tasks) -> list[str]:
    """The page's answer first: each group against the reference of its setting (badit where there is one),
    average ROUGE-L over the shared tasks, with its 95% interval and counts, and whether the interval tells
    the difference from 0 (the score section's difference rows, in words)."""
    from badit.evaluation.statistics import describe
    from badit.experiments.results import reference_differences

    lines = []
    for difference in reference_differences(groups, tasks):
        paired = difference.paired("rougeL")
        if not paired:
            continue
        low, high = paired["ci95"]
        verdict = (
            "no difference resolved at this n"
            if low <= 0 <= high
            else f"{difference.group.label} {'higher' if low > 0 else 'lower'}"
        )
        lines.append(
            f"Headline: {difference.group.label} − {difference.reference.label}, average ROUGE-L: "
            f"{describe(paired)}: {verdict}."
        )
    return lines


def _setup_line(runs) -> str:
    """What the runs were trained on: base model(s), batch size, training examples per task, data (each
    value once; several where runs differ), read from the runs' config.yaml."""
    from badit.experiments.folder import RunError

    found: dict[str, list[str]] = {
        "Base model": [],
        "batch size": [],
        "training examples per task": [],
        "data": [],
    }
    for run in runs:
        try:
            config = run.folder.saved_config()
        except RunError:
            config = {}
        sections = {
            key: config.get(key) if isinstance(config.get(key), dict) else {} for key in ("training", "data")
        }
        values = {
            "Base model": run.model,
            "batch size": sections["training"].get("per_device_train_batch_size", "?"),
            "training examples per task": sections["data"].get("max_train_examples_per_task") or "all",
            "data": sections["data"].get("path", "?"),
        }
        for key, value in values.items():
            if str(value) not in found[key]:
                found[key].append(str(value))
    return "; ".join(f"{key}: {', '.join(values)}" for key, values in found.items()) + "."


def _check_replaceable(output: Path) -> None:
    """An OutputError unless ``output`` is new or a page an earlier `badit report` wrote (its head holds
    `GENERATOR`, within the first 4 KB): --output never overwrites a user's file."""
    from badit.experiments.report.page import GENERATOR
    from badit.outputs import OutputError

    if not output.exists():
        return
    if not output.is_file():
        raise OutputError(f"--output {output} is not a file; give the path of the HTML page to write")
    with open(output, "rb") as f:
        head = f.read(4096)
    if GENERATOR.encode() not in head:
        raise OutputError(
            f"--output {output} exists and is not a page `badit report` wrote; badit replaces only its own "
            "reports: choose another file name (or move that file yourself)"
        )


def write_report(inputs: list[str | Path], output: str | Path, title: str = "badit report") -> Path:
    """Build the page and write it to `output` at once (a temp file renamed: never half a page)."""
    from badit.data.files import atomic_write_text

    output = Path(output)
    _check_replaceable(output)  # before the work: a file that is not a badit report is never replaced
    page = build_report(inputs, title)  # everything is read and drawn before anything is written
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output, page)
    return output
