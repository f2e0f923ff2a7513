"""The run folder: its layout, its config.yaml, and the checks that keep two runs out of one folder.

Run folder::

    RUN/.badit-run             the marker: badit created this folder (the only kind --overwrite deletes)
    RUN/config.yaml            the configuration as resolved (output_dir: where the run was created;
                               a run folder is read from where it is now, so it can be moved or copied)
    RUN/metrics.json           per-task scores, averages, run information (+ continual metrics)
    RUN/predictions.jsonl      one line per evaluated example
    RUN/summary.md             the scores as a table
    RUN/adapter/, checkpoints/, logs/          (multitask)
    RUN/tasks/<task>/...                       (single: one such folder per task)
    RUN/stages/<NN>-<task>/...                 (continual: one per stage)
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from pathlib import Path

from badit.data.files import atomic_write_json, atomic_write_text
from badit.errors import BaditError
from badit.experiments.config import RunConfig, load_config
from badit.training.methods import effective_scale

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.jsonl"
SUMMARY_FILE = "summary.md"
DONE_FILE = "done.json"  # written in a stage folder once its adapter and evaluation are complete
ADAPTER_CONFIG_FILE = "adapter_config.json"  # PEFT's: present once an adapter has been saved
MARKER_FILE = ".badit-run"  # written first when badit creates a run folder: {"badit_run": MARKER_VERSION}
MARKER_VERSION = 1


class RunError(BaditError, RuntimeError):
    """A run folder cannot be used as asked (exists, config differs, incomplete...)."""


def load_run_config(run_dir: str | Path) -> RunConfig:
    """The config.yaml of a run folder, read by ``load_config`` (with its errors), with ``output_dir``
    the folder where it is now: a moved or copied run works in its new place and never writes to the old
    one."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise RunError(f"{run_dir}: not a run folder (no {CONFIG_FILE}); run `badit train CONFIG` first")
    return dataclasses.replace(load_config(path), output_dir=str(Path(run_dir).resolve()))


def is_run_dir(folder: str | Path) -> bool:
    """Whether badit created ``folder`` as a run folder (it holds a valid marker file)."""
    marker = Path(folder) / MARKER_FILE
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and isinstance(data.get("badit_run"), int)


def mark_run_dir(folder: Path) -> None:
    """Write the marker that makes ``folder`` a badit run folder (and so one ``--overwrite`` may delete)."""
    atomic_write_json(folder / MARKER_FILE, {"badit_run": MARKER_VERSION})


def remove_run_dir(folder: str | Path) -> None:
    """Delete a run folder, only if badit marked it as one: no code path removes a user's files."""
    folder = Path(folder)
    if folder.is_symlink() or not is_run_dir(folder):
        raise RunError(
            f"{folder}: not marked as a badit run (no valid {MARKER_FILE}); badit deletes only folders it "
            "created: delete it yourself or choose another output_dir"
        )
    shutil.rmtree(folder)


def check_output_dir(run_dir: Path) -> None:
    """A ``RunError`` naming the fix when ``run_dir`` cannot hold a run folder: it is a file, lies under a
    file, or its nearest existing folder is not writable. Cheap: called before data or model is loaded."""
    fix = "set output_dir (or --output) to a folder you can write"
    if run_dir.exists() and not run_dir.is_dir():
        raise RunError(f"output_dir {run_dir} is a file, not a folder; {fix}")
    existing = run_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise RunError(f"output_dir {run_dir} lies under {existing}, which is a file; {fix}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RunError(f"output_dir {run_dir}: {existing} is not writable (permissions); {fix}")


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def resolve_paths(config: RunConfig) -> RunConfig:
    """The config with its local paths made absolute (relative ones are relative to the current folder),
    so that the saved config.yaml works from anywhere (``badit eval RUN``, ``--resume``)."""

    def absolute(path: str | None, must_exist: bool) -> str | None:
        if path is None or (must_exist and not Path(path).exists()):
            return path  # e.g. a hub name or the embedded model's name
        return str(Path(path).expanduser().resolve())

    return dataclasses.replace(
        config,
        output_dir=absolute(config.output_dir, must_exist=False),
        model=dataclasses.replace(
            config.model, name_or_path=absolute(config.model.name_or_path, must_exist=True)
        ),
        data=dataclasses.replace(config.data, path=absolute(config.data.path, must_exist=True)),
        training=dataclasses.replace(
            config.training, deepspeed=absolute(config.training.deepspeed, must_exist=True)
        ),
    )


def prepare_run_dir(config: RunConfig, is_main: bool, resume: bool = False, overwrite: bool = False) -> None:
    """Check the run folder and write config.yaml (main process only; the others call with is_main=False
    and must wait for it); refuses to mix two different runs in one folder."""
    if not is_main:
        return
    run_dir = Path(config.output_dir)
    _check_run_dir(run_dir, config, resume, overwrite)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not is_run_dir(run_dir):  # a new run, or one resumed with the same config (badit wrote it)
        mark_run_dir(run_dir)
    atomic_write_text(run_dir / CONFIG_FILE, config.to_yaml())


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _differences(x, y, f"{prefix}{key}.")
        elif x != y:
            out.append(f"{prefix}{key}: {x!r} (saved) vs {y!r} (now)")
    return out


def _check_run_dir(run_dir: Path, config: RunConfig, resume: bool, overwrite: bool) -> None:
    check_output_dir(run_dir)
    saved = run_dir / CONFIG_FILE
    if overwrite and run_dir.is_dir() and any(run_dir.iterdir()):
        if not is_run_dir(run_dir):
            raise RunError(
                f"{run_dir} is not a folder badit created (no {MARKER_FILE}), so --overwrite will not delete "
                "it; choose another output_dir (or delete the folder yourself)"
            )
        remove_run_dir(run_dir)
    elif saved.is_file():
        if resume:
            before = load_run_config(run_dir).to_dict()
            now = config.to_dict()
            # evaluation settings may change on resume, and the run folder may have been moved or copied
            for key in ("evaluation", "output_dir"):
                before.pop(key), now.pop(key)
            diff = _differences(before, now)
            if diff:
                raise RunError(
                    f"{saved} differs from the config given to --resume: {'; '.join(diff)}. "
                    f"Resume with the same config (e.g. `badit train {run_dir} --resume`) or use another output_dir"
                )
        else:
            raise RunError(
                f"{run_dir} already holds a run; pass --resume to continue it, --overwrite to replace it, "
                "or set output_dir to another folder"
            )
    elif run_dir.exists() and any(run_dir.iterdir()) and not is_run_dir(run_dir):
        raise RunError(
            f"{run_dir} exists and is not empty (and is not a badit run): choose another output_dir"
        )


def final_adapter_dir(run_dir: Path, config: RunConfig) -> Path:
    """The adapter a multitask run trained, or the last stage's of a continual run."""
    if config.setting == "single":
        raise RunError(
            f"{run_dir} is a single-task run: it has one adapter per task, under tasks/<task>/adapter"
        )
    if config.setting == "continual":
        stages_dir = run_dir / "stages"
        stages = (
            sorted(p for p in stages_dir.iterdir() if p.name[:2].isdigit()) if stages_dir.is_dir() else []
        )
        if not stages:
            raise RunError(f"{run_dir}: no finished stage (`badit train {run_dir} --resume`)")
        return stages[-1] / "adapter"
    return run_dir / "adapter"


def require_adapter(adapter_dir: Path, run_dir: Path) -> Path:
    """``adapter_dir`` if it holds a trained adapter, else a ``RunError`` that says how to finish the run."""
    if not (adapter_dir / ADAPTER_CONFIG_FILE).is_file():
        raise RunError(
            f"{adapter_dir}: no trained adapter (did the run finish? `badit train {run_dir} --resume`)"
        )
    return adapter_dir


def stage_done(stage_dir: Path) -> dict | None:
    """The record of a finished stage (adapter saved and evaluated), None if it is not finished."""
    path = stage_dir / DONE_FILE
    return read_json(path) if path.is_file() else None


def format_score(value: float | None, missing: str = "n/a") -> str:
    """A score with two decimals; None or NaN (a metric without enough stages) as ``missing``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    return f"{value:.2f}"


def summary_table(metrics: dict, title: str) -> str:
    """Markdown table of ROUGE-L and exact match per task, with the average over tasks."""
    lines = [f"# {title}", "", "| task | ROUGE-L | EM | n |", "|---|---:|---:|---:|"]
    for name, scores in metrics["tasks"].items():
        lines.append(
            f"| {name} | {scores['rougeL']:.2f} | {scores['exact_match']:.2f} | {scores['num_examples']} |"
        )
    average = metrics["average"]
    lines.append(f"| **average** | **{average['rougeL']:.2f}** | **{average['exact_match']:.2f}** | |")
    continual = metrics.get("continual")
    if continual:
        lines += [
            "",
            "Continual (ROUGE-L): "
            + ", ".join(f"{k} {format_score(v)}" for k, v in continual["rougeL"].items()),
        ]
    return "\n".join(lines) + "\n"


def write_results(run_dir: Path, config: RunConfig, metrics: dict, info: dict) -> dict:
    """metrics.json (with the run's information) and summary.md; returns the metrics written."""
    metrics = {**metrics, "run": {**info, **_run_info(config)}}
    atomic_write_json(run_dir / METRICS_FILE, metrics)
    _card_with_scores(run_dir, config, metrics)
    atomic_write_text(
        run_dir / SUMMARY_FILE,
        summary_table(metrics, f"{config.name}: {config.method.name}, {config.setting}"),
    )
    return metrics


def _card_with_scores(run_dir: Path, config: RunConfig, metrics: dict) -> None:
    """Put the tasks trained and their ROUGE-L into the model card of the run's BADIT adapter(s)."""
    from peft import PeftConfig

    from badit.adapter import BaditConfig
    from badit.adapter.card import write_model_card

    scores = {task: values.get("rougeL") for task, values in metrics.get("tasks", {}).items()}
    if config.setting == "single":
        adapters = {run_dir / "tasks" / task / "adapter": {task: score} for task, score in scores.items()}
    else:
        stages = run_dir / "stages"
        if config.setting == "continual" and not (stages.is_dir() and any(stages.iterdir())):
            return
        adapters = {final_adapter_dir(run_dir, config): scores}
    for adapter_dir, tasks in adapters.items():
        if (adapter_dir / ADAPTER_CONFIG_FILE).is_file():
            adapter_config = PeftConfig.from_pretrained(str(adapter_dir))
            if isinstance(adapter_config, BaditConfig):
                write_model_card(adapter_dir, adapter_config, tasks=tasks)


def _run_info(config: RunConfig) -> dict:
    return {
        "name": config.name,
        "method": config.method.name,
        "setting": config.setting,
        "model": config.model.name_or_path,
        "seed": config.seed,
        "data": config.data.path,
        "learning_rate": config.training.learning_rate,
        "effective_scale": effective_scale(config.method),
    }
