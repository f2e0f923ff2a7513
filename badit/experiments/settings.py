"""A run: train and evaluate one method in one setting, everything written into one run folder
(layout in ``badit.experiments.folder``).

Settings, each a short function over ``badit.experiments.stage.run_stage``:
- ``multitask``: one adapter trained on all tasks jointly (the paper's main setting);
- ``single``: one adapter per task, each evaluated on its own task (the reference of the
  interference score);
- ``continual``: one adapter trained on the tasks one after another; after each stage every task is
  evaluated, which fills the score matrix of the continual metrics (AP, forgetting, BWT, FWT).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from accelerate import PartialState
from transformers import TrainerCallback

from badit.data import Task, task_order
from badit.data.files import atomic_write_json, atomic_write_jsonl
from badit.evaluation import continual_metrics, metrics_from_records
from badit.experiments.config import RunConfig
from badit.experiments.folder import (
    DONE_FILE,
    METRICS_FILE,
    PREDICTIONS_FILE,
    check_output_dir,
    is_run_dir,
    prepare_run_dir,
    read_json,
    read_jsonl,
    remove_run_dir,
    resolve_paths,
    stage_done,
    write_results,
)
from badit.experiments.stage import (
    RunContext,
    adapter_model,
    data_source,
    evaluate_model,
    load_run_tasks,
    run_stage,
    task_names,
)
from badit.names import METRICS

SCORES = tuple(METRICS)


def run(
    config: RunConfig,
    resume: bool = False,
    overwrite: bool = False,
    extra_callbacks: Sequence[TrainerCallback] = (),
) -> dict:
    """Train and evaluate as ``config.setting`` says; returns the run's metrics (also in RUN/metrics.json).

    Under a distributed launcher every process trains; the main process alone checks and writes the
    run folder and evaluates, and the others return {}. The data is read before anything is written;
    a run that fails before its first training step (model not found, out of memory while loading...)
    removes the folder it created, so the corrected command runs without ``--overwrite``.
    """
    config = resolve_paths(config)
    # On CPU, accelerate joins a torchrun/mpirun launch (gloo) only when told cpu=True; otherwise every
    # process would think it is the main one (as the Trainer's arguments, which set it, find out later).
    state = PartialState(cpu=not torch.cuda.is_available())
    if state.is_main_process:
        check_output_dir(Path(config.output_dir))  # before the data and the model are loaded
    source = data_source(config)
    names = task_names(config, source)
    train_tasks, eval_tasks = load_run_tasks(config, names, source)
    fresh = overwrite or not Path(config.output_dir).exists()  # --overwrite replaces the old run anyway
    prepare_run_dir(config, state.is_main_process, resume=resume, overwrite=overwrite)
    state.wait_for_everyone()
    ctx = RunContext.create(config, names, state.is_main_process, resume, extra_callbacks)
    try:
        metrics = SETTINGS[config.setting](ctx, train_tasks, eval_tasks)
    except BaseException:
        if fresh and ctx.is_main and not training_started(ctx.run_dir) and is_run_dir(ctx.run_dir):
            remove_run_dir(ctx.run_dir)
        raise
    return metrics if ctx.is_main else {}


def training_started(run_dir: Path) -> bool:
    """Whether a training step of the run in ``run_dir`` has been logged or checkpointed."""
    return any(run_dir.rglob("train_log.jsonl")) or any(run_dir.rglob("checkpoint-*"))


def run_multitask(ctx: RunContext, train_tasks: list[Task], eval_tasks: list[Task]) -> dict:
    """One adapter on all tasks, in the run folder itself."""
    info = run_stage(ctx, train_tasks, eval_tasks, ctx.run_dir, mark_done=False)
    if not ctx.is_main:
        return {}
    return write_results(ctx.run_dir, ctx.config, read_json(ctx.run_dir / METRICS_FILE), info)


def run_single(ctx: RunContext, train_tasks: list[Task], eval_tasks: list[Task]) -> dict:
    """One adapter per task under tasks/<task>/, each evaluated on its task; the run's predictions are
    all of theirs."""
    infos = {}
    for train_task, eval_task in zip(train_tasks, eval_tasks, strict=True):
        infos[train_task.name] = run_stage(
            ctx, [train_task], [eval_task], ctx.run_dir / "tasks" / train_task.name
        )
    if not ctx.is_main:
        return {}
    records = [r for t in train_tasks for r in read_jsonl(ctx.run_dir / "tasks" / t.name / PREDICTIONS_FILE)]
    atomic_write_jsonl(ctx.run_dir / PREDICTIONS_FILE, records)
    return write_results(ctx.run_dir, ctx.config, metrics_from_records(records), {"tasks": infos})


def run_continual(ctx: RunContext, train_tasks: list[Task], eval_tasks: list[Task]) -> dict:
    """Stages under stages/<NN>-<task>/, each continuing the previous stage's adapter and evaluated on
    every task; the continual metrics come from the matrix of those scores."""
    config, run_dir = ctx.config, ctx.run_dir
    order = task_order(
        [t.name for t in train_tasks], seed=config.data.order_seed, order=config.data.task_order
    )
    by_name = {t.name: t for t in train_tasks}
    eval_order = (
        sorted(eval_tasks, key=lambda t: order.index(t.name))
        if set(order) == set(ctx.task_ids)
        else eval_tasks
    )
    eval_order = [t for t in eval_order if t.name in order]
    base_scores = _base_scores(ctx, eval_order, order) if config.evaluation.continual_base_scores else None

    stage_dirs = [run_dir / "stages" / f"{stage:02d}-{name}" for stage, name in enumerate(order)]
    infos, previous = {}, None
    for name, stage_dir in zip(order, stage_dirs, strict=True):
        infos[name] = run_stage(ctx, [by_name[name]], eval_order, stage_dir, init_adapter=previous)
        previous = stage_dir / "adapter"
    if not ctx.is_main:
        return {}
    stage_scores = [read_json(d / METRICS_FILE)["tasks"] for d in stage_dirs]
    matrix = {m: [[scores[t][m] for t in order] for scores in stage_scores] for m in SCORES}
    shutil.copyfile(stage_dirs[-1] / PREDICTIONS_FILE, run_dir / PREDICTIONS_FILE)
    metrics = read_json(stage_dirs[-1] / METRICS_FILE)
    metrics["continual"] = {
        m: continual_metrics(matrix[m], base_scores[m] if base_scores else None) for m in SCORES
    }
    metrics["continual"]["order"] = order
    metrics["continual"]["score_matrix"] = matrix
    metrics["continual"]["base_scores"] = base_scores
    return write_results(run_dir, config, metrics, {"stages": infos})


def _base_scores(ctx: RunContext, eval_order: list[Task], order: list[str]) -> dict | None:
    """Scores of the untrained adapter (b[j] of forward transfer), per metric in stage order; main
    process only (None on the others)."""
    if not ctx.is_main:
        return None
    base_dir = ctx.run_dir / "stages" / "base"
    if stage_done(base_dir) is None or not ctx.resume:
        model, tokenizer = adapter_model(ctx.config)
        evaluate_model(ctx.config, model, tokenizer, eval_order, base_dir)
        atomic_write_json(base_dir / DONE_FILE, {"stage": "base"})
    base_metrics = read_json(base_dir / METRICS_FILE)
    return {m: [base_metrics["tasks"][t][m] for t in order] for m in SCORES}


Setting = Callable[[RunContext, list[Task], list[Task]], dict]
SETTINGS: dict[str, Setting] = {
    "multitask": run_multitask,
    "single": run_single,
    "continual": run_continual,
}
