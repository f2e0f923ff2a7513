"""Interference analysis of a trained run folder (what `badit analyze RUN` and `badit demo` call)."""

from __future__ import annotations

from pathlib import Path

import torch

from badit.analysis import analyze
from badit.data import DataCollator
from badit.experiments.folder import RunError, RunFolder, RunLock
from badit.experiments.stage import data_source, run_task_ids, task_examples, task_names
from badit.outputs import check_output_folder, mark_output_folder


def analyze_run(
    run_dir: str | Path, output_dir: str | Path | None = None, examples_per_task: int = 8
) -> dict:
    """Gradient conflict, expert usage and neuron overlap of a run's trained adapter between its tasks.

    Uses `examples_per_task` training examples of every task of the run (one batch per task) and the
    adapter of a multitask run (the last stage's for a continual run). Writes ``analysis.json`` and
    heatmaps into `output_dir` (default ``RUN/analysis``) and returns the analysis.
    """
    if examples_per_task < 1:
        raise ValueError(f"examples_per_task must be at least 1, got {examples_per_task}")
    run = RunFolder(run_dir)
    config = run.config()
    run.require_adapter(run.final_adapter(config))
    own = output_dir is None or Path(output_dir).resolve() == run.analysis_dir.resolve()
    if not own:  # elsewhere: a new folder, or one an earlier analysis wrote; never a run or a user's files
        check_output_folder(output_dir, "analyze", reads=(run.path,))
    with RunLock(run.path):  # read (and, by default, written) while no training writes the run
        result = _analyze_run(run, config, examples_per_task, output_dir)
        if not own:
            mark_output_folder(output_dir, "analyze")
        return result


def _analyze_run(run: RunFolder, config, examples_per_task: int, output_dir) -> dict:
    """`analyze_run` once the output is checked and the run locked."""
    source = data_source(config)
    tasks = source.load("train", task_names(config, source))
    if len(tasks) < 2:
        raise RunError(f"{run.path}: interference needs at least 2 tasks, the run has {len(tasks)}")
    model, tokenizer = run.load_trained(config, trainable=True)  # gradients are measured
    collate = DataCollator(pad_token_id=tokenizer.pad_token_id)
    ids = run_task_ids(config)
    batches = {}
    for task in tasks:
        task.instances = task.instances[:examples_per_task]
        batch = collate(task_examples(config, tokenizer, task))
        batch["task_ids"] = torch.full_like(batch["input_ids"][:, 0], ids[task.name])  # the run's ids
        batches[task.name] = batch
    return analyze(
        model, batches, output_dir or run.analysis_dir, progress=True, result_name=run.analysis_file.name
    )
