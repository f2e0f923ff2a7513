"""Page sections about the runs themselves: each run's key settings (config.yaml), sample predictions
beside their references (predictions.jsonl), and why a BADIT run logged no regroup.

Reads only the run folders (`collect.Run.path`); the scores themselves are in sections.py.
"""

from __future__ import annotations

import re
from types import SimpleNamespace

from badit.experiments.folder import CONFIG_FILE, PREDICTIONS_FILE, RunError, RunFolder, StageFolder
from badit.experiments.report.collect import Collection, Run
from badit.experiments.report.page import Section, paragraph, table

SAMPLES_PER_TASK = 3  # predictions shown per task: enough to see what a model answers, short page
PROMPT_TAIL = 160  # characters of the prompt shown (its end: the instance, after any template)


def natural_key(name: str) -> list:
    """Sort key that orders the numbers inside names as numbers: layers 0, 1, 2, ..., 10 (not 0, 1, 10, 2)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _read_config(run: Run) -> dict:
    return RunFolder(run.path).saved_config()  # read by collect already: readable


def _get(config: dict, section: str, key: str):
    return (config.get(section) or {}).get(key)


def _steps_text(config: dict) -> str:
    steps = _get(config, "training", "max_steps")
    if isinstance(steps, int) and steps > 0:
        return f"{steps} steps"
    epochs = _get(config, "training", "num_train_epochs")
    return f"{epochs:g} epochs" if isinstance(epochs, (int, float)) else "-"


def _text(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def settings_rows(run: Run) -> list[str]:
    """method, setting, seed, lr, steps/epochs, K, r, alpha, target modules of one run (config.yaml)."""
    config = _read_config(run)
    return [
        run.label,
        run.method,
        run.setting,
        _text(run.seed),
        _text(_get(config, "training", "learning_rate")),
        _steps_text(config),
        _text(_get(config, "method", "num_experts")),
        _text(_get(config, "method", "r")),
        _text(_get(config, "method", "lora_alpha")),
        _text(_get(config, "method", "target_modules")),
    ]


def settings_section(collection: Collection) -> Section:
    section = Section("Runs and their settings")
    section.add(
        paragraph(
            "From each run's config.yaml (as resolved: defaults and overrides included). K and r: experts and "
            "rank per expert (BADIT family); PEFT's LoRA methods train rank K*r. Steps: training.max_steps, "
            "or the epochs when it is unset."
        )
    )
    header = ["run", "method", "setting", "seed", "lr", "steps", "K", "r", "alpha", "target modules"]
    section.add(table(header, [settings_rows(run) for run in collection.runs]))
    section.source(*(run.path / CONFIG_FILE for run in collection.runs))
    return section


def _predictions(run: Run) -> list[dict]:
    """The run's predictions.jsonl records ([] when it has none or it cannot be read: the scores come
    from metrics.json anyway)."""
    folder = RunFolder(run.path)
    if not folder.predictions_file.is_file():
        return []
    try:
        records = folder.predictions()
    except (RunError, ValueError):
        return []
    return [r for r in records if isinstance(r, dict) and "task" in r]


def _tail(text: str, limit: int = PROMPT_TAIL) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else "..." + text[-(limit - 3) :]


def predictions_section(collection: Collection, per_task: int = SAMPLES_PER_TASK) -> Section | None:
    """The first ``per_task`` test examples of each shared task (the first run's order), each run's
    prediction beside the references."""
    found = [(run, _predictions(run)) for run in collection.runs]
    found = [(run, records) for run, records in found if records]
    if not found:
        return None
    section = Section("Sample predictions")
    section.add(
        paragraph(
            f"The first {per_task} evaluated examples of each task, with each run's greedy prediction and the "
            f"references; prompts shortened to their last {PROMPT_TAIL} characters."
        )
    )
    by_run = {run.label: {(r["task"], str(r.get("id"))): r for r in records} for run, records in found}
    first_records = found[0][1]
    rows = []
    for task in collection.shared_tasks:
        examples = [r for r in first_records if r["task"] == task][:per_task]
        for example in examples:
            key = (task, str(example.get("id")))
            references = example.get("references") or []
            predictions = [by_run[run.label].get(key, {}).get("prediction", "-") for run, _ in found]
            rows.append(
                [
                    task,
                    _tail(example.get("prompt", "")),
                    " | ".join(map(str, references)),
                    *map(str, predictions),
                ]
            )
    section.add(table(["task", "prompt (end)", "references", *(run.label for run, _ in found)], rows))
    section.source(*(run.path / PREDICTIONS_FILE for run, _ in found))
    missing = [run.label for run in collection.runs if run not in [r for r, _ in found]]
    if missing:
        section.add(paragraph(f"No {PREDICTIONS_FILE} at the top of: {', '.join(missing)}."))
    return section


def no_regroup_reason(run: Run) -> str:
    """Why a BADIT run's logs hold no regroup: regrouping switched off, a schedule that never fires
    (`badit.regrouping.never_regroups` on the logged step counts), regroups without gradients, or a
    missing log."""
    config = _read_config(run)
    method = config.get("method") or {}
    if method.get("regroup") is False:
        return "regrouping is off (method.regroup: false): the run trained as svd-moe"
    records = [r for segment in run.segments for r in segment.regroup]
    if records:
        return "regroups ran but no layer had a gradient since the previous one (nothing to cluster)"
    train = [r for segment in run.segments for r in segment.train if "step" in r]
    total = max((r["step"] for r in train), default=0)
    per_epoch = [r["step"] / r["epoch"] for r in train if r.get("epoch") and r.get("step")]
    if total and per_epoch:
        from badit.regrouping.schedule import never_regroups

        schedule = SimpleNamespace(
            regroup=True,
            regroup_every=method.get("regroup_every", "epoch"),
            regroup_until=method.get("regroup_until", 0.5),
        )
        reason = never_regroups(schedule, total_steps=total, steps_per_epoch=round(per_epoch[-1]))
        if reason:
            return reason
    where = ", ".join(str(StageFolder(s.folder).log_file("regroup")) for s in run.segments)
    return (
        f"no regroup record in {where} although the schedule would regroup (log deleted, or an older badit)"
    )
