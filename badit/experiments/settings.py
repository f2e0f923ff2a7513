"""A run: train and evaluate one method in one setting, everything written into one run folder
(``badit.experiments.folder.RunFolder``: layout, files, readers).

Settings, each a short function over ``badit.experiments.stage.run_stage``:
- ``multitask``: one adapter trained on all tasks jointly (the paper's main setting);
- ``single``: one adapter per task, each evaluated on its own task (the reference of the
  interference score);
- ``continual``: one adapter trained on the tasks one after another; after each stage every task is
  evaluated, which fills the score matrix of the continual metrics (AP, forgetting, BWT, FWT).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections.abc import Callable, Sequence

import torch
from accelerate import PartialState
from transformers import TrainerCallback

from badit.data import Task, task_order
from badit.data.files import atomic_write_jsonl
from badit.data.sources import CarvedDevSource
from badit.evaluation import continual_metrics, metrics_from_records
from badit.experiments.config import RunConfig
from badit.experiments.folder import RunFolder, RunLock, resolve_paths
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
logger = logging.getLogger(__name__)


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
    folder = RunFolder(config.output_dir)
    if state.is_main_process:
        folder.check_writable()  # before the data and the model are loaded
    source = data_source(config)
    names = task_names(config, source)
    train_tasks, eval_tasks = load_run_tasks(config, names, source)
    carving = source.describe_carving() if isinstance(source, CarvedDevSource) else None
    if carving and state.is_main_process:
        logger.warning("%s", carving)  # once per run: every stage trains on the same carved splits
    existed = folder.path.exists()
    fresh = overwrite or not existed  # --overwrite replaces the old run anyway
    lock = RunLock(folder.path)
    if state.is_main_process:  # the other processes wait for it
        # Held until the run is written: a second writer is refused, naming this pid. Taken before the
        # folder is checked (or deleted by --overwrite) when it is new or badit's; a folder of the user's
        # gets no lock file unless `prepare` accepts it (an empty folder) and makes it a run folder.
        ours = not existed or folder.is_run()
        if ours:
            lock.acquire()
        try:
            folder.prepare(config, resume=resume, overwrite=overwrite)
            if not ours:
                lock.acquire()
        except BaseException:
            lock.release()
            if not existed:  # the folder that only the lock created
                folder.remove_lock_only_folder()
            raise
    state.wait_for_everyone()
    ctx = RunContext.create(config, names, state.is_main_process, resume, extra_callbacks)
    try:
        metrics = SETTINGS[config.setting](ctx, train_tasks, eval_tasks)
    except BaseException:
        if fresh and ctx.is_main and not folder.training_started() and folder.is_run():
            folder.remove()
        raise
    finally:
        lock.release()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # the run's collectives are over on this process: leave the group before the interpreter exits,
        # so that no communication thread is torn down at exit (seen: a gloo rank aborting with SIGABRT)
        torch.distributed.destroy_process_group()
    return metrics if ctx.is_main else {}


def run_multitask(ctx: RunContext, train_tasks: list[Task], eval_tasks: list[Task]) -> dict:
    """One adapter on all tasks, in the run folder itself."""
    info = run_stage(ctx, train_tasks, eval_tasks, ctx.run, mark_done=False)
    if not ctx.is_main:
        return {}
    return ctx.run.write_results(ctx.config, ctx.run.metrics(), info)


def run_single(ctx: RunContext, train_tasks: list[Task], eval_tasks: list[Task]) -> dict:
    """One adapter per task under tasks/<task>/, each evaluated on its task; the run's predictions are
    all of theirs."""
    infos = {}
    steps = single_task_steps(ctx.config, train_tasks)
    for train_task, eval_task in zip(train_tasks, eval_tasks, strict=True):
        task_ctx = ctx
        if steps[train_task.name] != ctx.config.training.max_steps:
            training = dataclasses.replace(ctx.config.training, max_steps=steps[train_task.name])
            task_ctx = dataclasses.replace(ctx, config=dataclasses.replace(ctx.config, training=training))
        infos[train_task.name] = run_stage(
            task_ctx, [train_task], [eval_task], ctx.run.task_stage(train_task.name)
        )
    if not ctx.is_main:
        return {}
    records = [r for t in train_tasks for r in ctx.run.task_stage(t.name).predictions()]
    atomic_write_jsonl(ctx.run.predictions_file, records)
    return ctx.run.write_results(ctx.config, metrics_from_records(records), {"tasks": infos})


def single_task_steps(config: RunConfig, train_tasks: Sequence[Task]) -> dict[str, int]:
    """Each task's ``max_steps`` in the single setting: ``training.max_steps``, or with
    ``training.single_task_steps: share`` its share of it, max_steps * n_t / N rounded (at least 1), so
    that each adapter makes the passes over its task's data that a multi-task run of max_steps makes.
    E.g. 30 steps, tasks of 40 and 20 examples: 20 and 10 steps."""
    max_steps = config.training.max_steps
    if config.training.single_task_steps != "share" or max_steps <= 0:
        return {t.name: max_steps for t in train_tasks}
    total = sum(len(t.instances) for t in train_tasks)
    return {t.name: max(1, round(max_steps * len(t.instances) / total)) for t in train_tasks}


def run_continual(ctx: RunContext, train_tasks: list[Task], eval_tasks: list[Task]) -> dict:
    """Stages under stages/<NN>-<task>/, each continuing the previous stage's adapter and evaluated on
    every task; the continual metrics come from the matrix of those scores."""
    config, run = ctx.config, ctx.run
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

    stages = [run.continual_stage(i, name) for i, name in enumerate(order)]
    infos, previous = {}, None
    for name, stage in zip(order, stages, strict=True):
        infos[name] = run_stage(ctx, [by_name[name]], eval_order, stage, init_adapter=previous)
        previous = stage.adapter
    if not ctx.is_main:
        return {}
    stage_scores = [stage.metrics(run.path)["tasks"] for stage in stages]
    matrix = {m: [[scores[t][m] for t in order] for scores in stage_scores] for m in SCORES}
    shutil.copyfile(stages[-1].predictions_file, run.predictions_file)
    metrics = stages[-1].metrics(run.path)
    metrics["continual"] = {
        m: continual_metrics(matrix[m], base_scores[m] if base_scores else None) for m in SCORES
    }
    metrics["continual"]["order"] = order
    metrics["continual"]["score_matrix"] = matrix
    metrics["continual"]["base_scores"] = base_scores
    return run.write_results(config, metrics, {"stages": infos})


def _base_scores(ctx: RunContext, eval_order: list[Task], order: list[str]) -> dict | None:
    """Scores of the untrained adapter (b[j] of forward transfer), per metric in stage order; main
    process only (None on the others)."""
    if not ctx.is_main:
        return None
    base = ctx.run.base_stage
    if base.done() is None or not ctx.resume:
        model, tokenizer = adapter_model(ctx.config, num_tasks=len(ctx.task_ids))
        evaluate_model(ctx.config, model, tokenizer, eval_order, base)
        base.mark_done({"stage": "base"})
    base_metrics = base.metrics(ctx.run.path)
    return {m: [base_metrics["tasks"][t][m] for t in order] for m in SCORES}


Setting = Callable[[RunContext, list[Task], list[Task]], dict]
SETTINGS: dict[str, Setting] = {
    "multitask": run_multitask,
    "single": run_single,
    "continual": run_continual,
}
