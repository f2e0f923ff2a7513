"""A run: train and evaluate one method in one setting, everything written into one folder.

Settings:
- ``multitask``: one adapter trained on all tasks jointly (the paper's main setting);
- ``single``: one adapter per task, each evaluated on its own task (the reference of the
  interference score);
- ``continual``: one adapter trained on the tasks one after another; after each stage every task is
  evaluated, which fills the score matrix of the continual metrics (AP, forgetting, BWT, FWT).

Run folder::

    RUN/config.yaml            the configuration as resolved
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
import logging
import math
import random
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import yaml
from accelerate import PartialState
from peft import PeftModel
from transformers import TrainerCallback

from badit.data import SplitSizes, Task, list_tasks, load_tasks, task_order
from badit.data.files import atomic_write_json, atomic_write_jsonl, atomic_write_text
from badit.evaluation import continual_metrics, evaluate, summarize
from badit.training.config import ConfigError, RunConfig, from_dict
from badit.training.model_loading import load_model_and_tokenizer
from badit.training.trainer import build_adapter_model, prompt_template, train_stage

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.jsonl"
SUMMARY_FILE = "summary.md"
DONE_FILE = "done.json"  # written in a stage folder once its adapter and evaluation are complete


class RunError(RuntimeError):
    """A run folder cannot be used as asked (exists, config differs, incomplete...)."""


# ----------------------------------------------------------------------------------------------
# Run folder


def load_run_config(run_dir: str | Path) -> RunConfig:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise RunError(f"{run_dir}: not a run folder (no {CONFIG_FILE}); run `badit train CONFIG` first")
    return from_dict(yaml.safe_load(path.read_text(encoding="utf-8")) or {}, source=str(path))


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _differences(x, y, f"{prefix}{key}.")
        elif x != y:
            out.append(f"{prefix}{key}: {x!r} (saved) vs {y!r} (now)")
    return out


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


def prepare_run_dir(config: RunConfig, resume: bool = False, overwrite: bool = False) -> Path:
    """Create the run folder and write config.yaml; refuses to mix two different runs in one folder.

    Under a distributed launcher only the main process checks and writes; the others wait for it.
    """
    run_dir = Path(config.output_dir)
    state = PartialState()
    if state.is_main_process:
        _check_run_dir(run_dir, config, resume, overwrite)
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / CONFIG_FILE, config.to_yaml())
    state.wait_for_everyone()
    return run_dir


def _check_run_dir(run_dir: Path, config: RunConfig, resume: bool, overwrite: bool) -> None:
    saved = run_dir / CONFIG_FILE
    if saved.is_file():
        if overwrite:
            shutil.rmtree(run_dir)
        elif resume:
            before = load_run_config(run_dir).to_dict()
            now = config.to_dict()
            before.pop("evaluation"), now.pop("evaluation")  # evaluation settings may change on resume
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
    elif run_dir.exists() and any(run_dir.iterdir()) and not resume:
        raise RunError(
            f"{run_dir} exists and is not empty (and is not a badit run): choose another output_dir"
        )


# ----------------------------------------------------------------------------------------------
# Data


def _subsample(task: Task, limit: int | None, seed: int | None) -> Task:
    """At most ``limit`` instances: a seeded sample in file order (``seed``), or the first ones (None)."""
    if limit is None or len(task.instances) <= limit:
        return task
    if seed is None:
        keep = range(limit)
    else:
        keep = sorted(random.Random(f"{seed}-{task.name}").sample(range(len(task.instances)), limit))
    return dataclasses.replace(task, instances=[task.instances[i] for i in keep])


def task_names(config: RunConfig) -> list[str]:
    return sorted(config.data.tasks) if config.data.tasks else list_tasks(config.data.path)


def load_run_tasks(config: RunConfig, names: Sequence[str]) -> tuple[list[Task], list[Task]]:
    """(training tasks, evaluation tasks) with the configured caps on examples per task."""
    sizes = SplitSizes(**config.data.split_sizes) if config.data.split_sizes else None
    train = load_tasks(config.data.path, "train", list(names), sizes)
    test = load_tasks(config.data.path, config.evaluation.split, list(names), sizes)
    train = [_subsample(t, config.data.max_train_examples_per_task, config.seed) for t in train]
    test = [_subsample(t, config.evaluation.max_examples_per_task, None) for t in test]
    return train, test


# ----------------------------------------------------------------------------------------------
# Evaluation


def evaluate_model(config: RunConfig, model, tokenizer, tasks: Sequence[Task], output_dir: Path) -> dict:
    """Greedy evaluation of ``model`` on ``tasks``; writes predictions.jsonl and metrics.json there."""
    if torch.cuda.is_available() and model.device.type != "cuda":
        model.to("cuda")
    return evaluate(
        model,
        tokenizer,
        tasks,
        output_dir,
        template=prompt_template(config),
        max_source_length=config.data.max_source_length,
        max_new_tokens=config.evaluation.max_new_tokens,
        batch_size=config.evaluation.batch_size,
        stop_at_newline=config.evaluation.stop_at_newline,
    )


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


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
            "Continual (ROUGE-L): " + ", ".join(f"{k} {_fmt(v)}" for k, v in continual["rougeL"].items()),
        ]
    return "\n".join(lines) + "\n"


def _fmt(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"


def _finish(run_dir: Path, config: RunConfig, metrics: dict, info: dict) -> dict:
    metrics = {**metrics, "run": {**info, **_run_info(config)}}
    atomic_write_json(run_dir / METRICS_FILE, metrics)
    atomic_write_text(
        run_dir / SUMMARY_FILE,
        summary_table(metrics, f"{config.name}: {config.method.name}, {config.setting}"),
    )
    return metrics


def _run_info(config: RunConfig) -> dict:
    return {
        "name": config.name,
        "method": config.method.name,
        "setting": config.setting,
        "model": config.model.name_or_path,
        "seed": config.seed,
        "data": config.data.path,
    }


# ----------------------------------------------------------------------------------------------
# Settings


def run(
    config: RunConfig,
    resume: bool = False,
    overwrite: bool = False,
    extra_callbacks: Sequence[TrainerCallback] = (),
) -> dict:
    """Train and evaluate as ``config.setting`` says; returns the run's metrics (also in RUN/metrics.json)."""
    config = resolve_paths(config)
    run_dir = prepare_run_dir(config, resume=resume, overwrite=overwrite)
    names = task_names(config)
    train_tasks, eval_tasks = load_run_tasks(config, names)
    ids = {name: i for i, name in enumerate(names)}
    settings = {"multitask": _run_multitask, "single": _run_single, "continual": _run_continual}
    return settings[config.setting](config, run_dir, train_tasks, eval_tasks, ids, resume, extra_callbacks)


def load_base_model(config: RunConfig):
    """The run's base model and tokenizer."""
    m = config.model
    return load_model_and_tokenizer(m.name_or_path, m.dtype, m.trust_remote_code, m.attn_implementation)


def _run_multitask(config, run_dir, train_tasks, eval_tasks, ids, resume, extra_callbacks) -> dict:
    base, tokenizer = load_base_model(config)
    model = build_adapter_model(config, base)
    result = train_stage(config, model, tokenizer, train_tasks, run_dir, ids, resume, extra_callbacks)
    if not PartialState().is_main_process:
        return {}
    start = time.perf_counter()
    metrics = evaluate_model(config, model, tokenizer, eval_tasks, run_dir)
    info = _stage_info(result, time.perf_counter() - start)
    return _finish(run_dir, config, metrics, info)


def _stage_info(result, eval_seconds: float) -> dict:
    losses = [r["loss"] for r in result.log_history if "loss" in r]
    return {
        "train_seconds": round(result.seconds, 2),
        "eval_seconds": round(eval_seconds, 2),
        "global_step": result.global_step,
        "train_loss": result.train_loss,
        "first_logged_loss": losses[0] if losses else None,
        "last_logged_loss": losses[-1] if losses else None,
    }


def _stage_done(stage_dir: Path) -> dict | None:
    path = stage_dir / DONE_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _run_single(config, run_dir, train_tasks, eval_tasks, ids, resume, extra_callbacks) -> dict:
    records, infos = [], {}
    for train_task, eval_task in zip(train_tasks, eval_tasks, strict=True):
        stage_dir = run_dir / "tasks" / train_task.name
        done = _stage_done(stage_dir) if resume else None
        if done is None:
            base, tokenizer = load_base_model(config)
            model = build_adapter_model(config, base)
            result = train_stage(
                config, model, tokenizer, [train_task], stage_dir, ids, resume, extra_callbacks
            )
            if PartialState().is_main_process:
                start = time.perf_counter()
                evaluate_model(config, model, tokenizer, [eval_task], stage_dir)
                done = _stage_info(result, time.perf_counter() - start)
                atomic_write_json(stage_dir / DONE_FILE, done)
            del model, base
        infos[train_task.name] = done
        if PartialState().is_main_process:
            records += _read_jsonl(stage_dir / PREDICTIONS_FILE)
    if not PartialState().is_main_process:
        return {}
    atomic_write_jsonl(run_dir / PREDICTIONS_FILE, records)
    metrics = summarize(records)
    return _finish(run_dir, config, metrics, {"tasks": infos})


def _run_continual(config, run_dir, train_tasks, eval_tasks, ids, resume, extra_callbacks) -> dict:
    order = task_order(
        [t.name for t in train_tasks], seed=config.data.order_seed, order=config.data.task_order
    )
    by_name = {t.name: t for t in train_tasks}
    eval_order = (
        sorted(eval_tasks, key=lambda t: order.index(t.name)) if set(order) == set(ids) else eval_tasks
    )
    eval_order = [t for t in eval_order if t.name in order]
    main = PartialState().is_main_process

    base_scores = None
    if config.evaluation.continual_base_scores and main:
        base_dir = run_dir / "stages" / "base"
        if _stage_done(base_dir) is None or not resume:
            base, tokenizer = load_base_model(config)
            model = build_adapter_model(config, base)  # the untrained adapter: b[j] of FWT
            evaluate_model(config, model, tokenizer, eval_order, base_dir)
            atomic_write_json(base_dir / DONE_FILE, {"stage": "base"})
            del model, base
        base_metrics = json.loads((base_dir / METRICS_FILE).read_text(encoding="utf-8"))
        base_scores = {m: [base_metrics["tasks"][t][m] for t in order] for m in ("rougeL", "exact_match")}

    matrix = {"rougeL": [], "exact_match": []}
    infos, previous = {}, None
    for stage, name in enumerate(order):
        stage_dir = run_dir / "stages" / f"{stage:02d}-{name}"
        done = _stage_done(stage_dir) if resume else None
        if done is None:
            base, tokenizer = load_base_model(config)
            model = build_adapter_model(config, base, init_adapter=previous)
            result = train_stage(
                config, model, tokenizer, [by_name[name]], stage_dir, ids, resume, extra_callbacks
            )
            if main:
                start = time.perf_counter()
                evaluate_model(config, model, tokenizer, eval_order, stage_dir)
                done = _stage_info(result, time.perf_counter() - start)
                atomic_write_json(stage_dir / DONE_FILE, done)
            del model, base
        infos[name] = done
        previous = stage_dir / "adapter"
        if main:
            stage_metrics = json.loads((stage_dir / METRICS_FILE).read_text(encoding="utf-8"))
            for m in matrix:
                matrix[m].append([stage_metrics["tasks"][t][m] for t in order])
    if not main:
        return {}
    final_dir = run_dir / "stages" / f"{len(order) - 1:02d}-{order[-1]}"
    shutil.copyfile(final_dir / PREDICTIONS_FILE, run_dir / PREDICTIONS_FILE)
    metrics = json.loads((final_dir / METRICS_FILE).read_text(encoding="utf-8"))
    metrics["continual"] = {
        m: continual_metrics(matrix[m], base_scores[m] if base_scores else None)
        for m in ("rougeL", "exact_match")
    }
    metrics["continual"]["order"] = order
    metrics["continual"]["score_matrix"] = matrix
    metrics["continual"]["base_scores"] = base_scores
    return _finish(run_dir, config, metrics, {"stages": infos})


# ----------------------------------------------------------------------------------------------
# Re-evaluation


def final_adapter_dir(run_dir: Path, config: RunConfig) -> Path:
    """The adapter a multitask run trained, or the last stage's of a continual run."""
    if config.setting == "single":
        raise RunError(
            f"{run_dir} is a single-task run: it has one adapter per task, under tasks/<task>/adapter"
        )
    if config.setting == "continual":
        stages = sorted(p for p in (run_dir / "stages").iterdir() if p.name[:2].isdigit())
        if not stages:
            raise RunError(f"{run_dir}: no finished stage (`badit train {run_dir} --resume`)")
        return stages[-1] / "adapter"
    return run_dir / "adapter"


def reevaluate(
    run_dir: str | Path, overrides: Sequence[str] = (), output_dir: str | Path | None = None
) -> dict:
    """Evaluate a finished run's adapter(s) again (e.g. on more examples); ``overrides`` change the
    ``evaluation.*`` (or ``data.*``) settings. Writes metrics.json / predictions.jsonl into
    ``output_dir`` (default: the run folder)."""
    from badit.training.config import apply_override

    run_dir = Path(run_dir)
    saved = load_run_config(run_dir).to_dict()
    for override in overrides:
        if not override.split("=", 1)[0].startswith(("evaluation.", "data.")):
            raise ConfigError(
                f"override {override!r}: badit eval only changes evaluation.* and data.* settings"
            )
        apply_override(saved, override)
    config = from_dict(saved, source=str(run_dir / CONFIG_FILE))
    out = Path(output_dir) if output_dir else run_dir
    out.mkdir(parents=True, exist_ok=True)
    names = task_names(config)
    _, eval_tasks = load_run_tasks(config, names)

    def adapter_model(adapter_dir: Path):
        if not (adapter_dir / "adapter_config.json").is_file():
            raise RunError(
                f"{adapter_dir}: no trained adapter (did the run finish? `badit train {run_dir} --resume`)"
            )
        base, tokenizer = load_base_model(config)
        return PeftModel.from_pretrained(base, str(adapter_dir)).eval(), tokenizer

    if config.setting == "single":
        records = []
        for task in eval_tasks:
            model, tokenizer = adapter_model(run_dir / "tasks" / task.name / "adapter")
            task_dir = out / "tasks" / task.name
            evaluate_model(config, model, tokenizer, [task], task_dir)
            records += _read_jsonl(task_dir / PREDICTIONS_FILE)
        atomic_write_jsonl(out / PREDICTIONS_FILE, records)
        metrics = summarize(records)
    else:
        model, tokenizer = adapter_model(final_adapter_dir(run_dir, config))
        metrics = evaluate_model(config, model, tokenizer, eval_tasks, out)
        previous = run_dir / METRICS_FILE
        if config.setting == "continual" and previous.is_file():  # the matrix needs every stage: keep it
            metrics["continual"] = json.loads(previous.read_text(encoding="utf-8")).get("continual")
    return _finish(out, config, metrics, {"reevaluated": True})
