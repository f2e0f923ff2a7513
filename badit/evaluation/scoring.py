"""Evaluate a model on SuperNI tasks; every number is written next to the predictions it came from.

`evaluate` writes into the run folder (atomically):
- `predictions.jsonl`: one object per example: task, id, prompt (the exact prompt tokens, decoded),
  prediction, references, english, rougeL and exact_match (per-example scores times 100);
- `metrics.json`: per task {rougeL, exact_match, num_examples}, "average" (mean over tasks) and
  "all_examples" (mean over examples: the "all_rougeL"/"all_EM" lines of Tk-Instruct's script).
`score_predictions_file` recomputes metrics.json's numbers from a predictions.jsonl alone.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from statistics import fmean

from badit.adapter import uses_task_routing
from badit.data.files import DataError, atomic_write_json, atomic_write_jsonl
from badit.data.prompts import PromptTemplate
from badit.data.tasks import Task
from badit.data.tokenize import encode_prompts
from badit.evaluation.continual import mean_over_tasks
from badit.evaluation.generate import generate_answers
from badit.evaluation.metrics import exact_match, rouge_l
from badit.names import METRICS as METRIC_LABELS

METRICS = tuple(METRIC_LABELS)
DECIMALS = 4  # as the SuperNI / Tk-Instruct scripts print them


def score_example(record: dict, remove_articles: bool = False) -> dict:
    """`record` with per-example rougeL and exact_match (times 100) computed from prediction/references."""
    refs, pred = record["references"], record["prediction"]
    return {
        **record,
        "rougeL": 100.0 * rouge_l(pred, refs, english=record.get("english", True)),
        "exact_match": 100.0 * exact_match(pred, refs, remove_articles),
    }


def _rounded(scores: dict) -> dict:
    return {k: round(v, DECIMALS) if isinstance(v, float) else v for k, v in scores.items()}


def metrics_from_records(records: Sequence[dict]) -> dict:
    """Per-task means, the mean over tasks ("average") and over examples ("all_examples")."""
    by_task: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_task[r["task"]].append(r)
    tasks = {
        name: {m: fmean(r[m] for r in rows) for m in METRICS} | {"num_examples": len(rows)}
        for name, rows in sorted(by_task.items())
    }
    average = {m: mean_over_tasks({t: s[m] for t, s in tasks.items()}) for m in METRICS}
    overall = {m: fmean(r[m] for r in records) for m in METRICS}
    return {
        "tasks": {t: _rounded(s) for t, s in tasks.items()},
        "average": _rounded(average),
        "all_examples": _rounded(overall) | {"num_examples": len(records)},
    }


def score_predictions_file(path: str | Path, remove_articles: bool = False) -> dict:
    """Recompute the metrics of a predictions.jsonl from its predictions and references."""
    path = Path(path)
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            records.append(score_example(json.loads(line), remove_articles))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise DataError(
                f"{path}:{n}: not a prediction record ({e}); needs task, prediction, references"
            ) from None
    if not records:
        raise DataError(f"{path}: no predictions")
    return metrics_from_records(records)


def evaluate(
    model,
    tokenizer,
    tasks: Sequence[Task],
    predictions_file: str | Path,
    metrics_file: str | Path,
    *,
    template: PromptTemplate | None = None,
    max_source_length: int = 1024,
    max_new_tokens: int = 50,
    batch_size: int = 16,
    stop_at_newline: bool = False,
    remove_articles: bool = False,
    progress: str | None = "eval",
    task_ids: Mapping[str, int] | None = None,
) -> dict:
    """Greedy-decode every instance of `tasks`, score it, write one record per example to
    `predictions_file` (JSON lines) and the metrics to `metrics_file` (JSON); return the metrics. Batches mix tasks (BADIT routes each sequence by itself).
    `progress`: the label of the progress bar (examples/s, ETA); None hides it. `task_ids` (task name ->
    the id it was trained with) is needed by adapters that route by task (`routing="task"`)."""
    if task_ids is None and uses_task_routing(model):
        raise ValueError("this adapter routes by task id (routing='task'): pass evaluate(..., task_ids=...)")
    template = template or PromptTemplate()
    prompts = encode_prompts(tokenizer, tasks, template, max_source_length)
    was_training = model.training
    model.eval()
    try:
        answers = generate_answers(
            model,
            tokenizer,
            prompts,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            stop_at_newline=stop_at_newline,
            progress=progress,
            task_ids=None if task_ids is None else [task_ids[t.name] for t in tasks for _ in t.instances],
        )
    finally:
        model.train(was_training)
    pairs = [(task, inst) for task in tasks for inst in task.instances]
    records = [
        score_example(
            {
                "task": task.name,
                "id": inst.id,
                "input": inst.input,  # examples of several tasks on one input are correlated (statistics)
                "prompt": tokenizer.decode(prompt),
                "prediction": answer,
                "references": inst.outputs,
                "english": task.is_english,
            },
            remove_articles,
        )
        for (task, inst), prompt, answer in zip(pairs, prompts, answers)
    ]
    metrics = metrics_from_records(records)
    metrics["settings"] = {
        "max_source_length": max_source_length,
        "max_new_tokens": max_new_tokens,
        "stop_at_newline": stop_at_newline,
        "remove_articles": remove_articles,
        "template": template.template,
        "num_pos_examples": template.num_pos_examples,
        "use_chat_template": template.use_chat_template,
    }
    atomic_write_jsonl(Path(predictions_file), records)  # the predictions first: metrics mean both are there
    atomic_write_json(Path(metrics_file), metrics)
    return metrics
