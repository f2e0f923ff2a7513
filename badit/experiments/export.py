"""`badit export`: a run's (or an adapter folder's) BADIT adapter as a plain LoRA folder or a merged model.

The routing is fixed: a task's mean routing over its training prompts (`--task`), given weights
(`--weights`), or uniform. The library functions are in badit/adapter/export.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from peft import PeftModel

from badit.adapter.export import ExportError, Routing, badit_layers, export_lora, export_merged, mean_routing
from badit.adapter.integrity import check_adapter_folder
from badit.data import DataCollator, tokenize_tasks
from badit.experiments.folder import (
    ADAPTER_CONFIG_FILE,
    CONFIG_FILE,
    RunError,
    final_adapter_dir,
    load_run_config,
    require_adapter,
)
from badit.experiments.stage import load_base_model, load_run_tasks, prompt_template, task_names
from badit.training.model_loading import load_model_and_tokenizer

FORMATS = ("lora", "merged")
BATCH_SIZE = 8  # sequences per forward when averaging a task's routing


def task_routing(
    config, model, tokenizer, task_names_: list[str] | None = None, examples_per_task: int = 64
) -> dict[str, dict[str, torch.Tensor]]:
    """Each task's mean routing per layer (task -> layer -> (K,)), in `set_fixed_routing`'s scale.

    Averages over the first `examples_per_task` training prompts of each task (labels -100 on the prompt,
    so the routers pool the prompt as in training).
    """
    names = task_names_ or task_names(config)
    train, _ = load_run_tasks(config, names)
    collate = DataCollator(pad_token_id=tokenizer.pad_token_id)
    result = {}
    for task in train:
        examples = tokenize_tasks(
            tokenizer,
            [task],
            prompt_template(config.data),
            max_source_length=config.data.max_source_length,
            max_target_length=config.data.max_target_length,
        )[:examples_per_task]
        batches = []
        for start in range(0, len(examples), BATCH_SIZE):
            batch = collate(examples[start : start + BATCH_SIZE])
            batch.pop("task_ids", None)
            batches.append(batch)
        result[task.name] = mean_routing(model, batches)
    return result


def parse_weights(text: str) -> torch.Tensor:
    """'w1,...,wK' -> a (K,) tensor; raises ExportError naming the option."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise ExportError(f"--weights {text!r}: give comma-separated numbers, e.g. 1,1,2,0.5,0.5,1") from None
    if any(v < 0 for v in values):
        raise ExportError(f"--weights {text!r}: mixing weights cannot be negative")
    return torch.tensor(values)


def export(
    source: str | Path,
    output: str | Path,
    task: str | None = None,
    weights: str | None = None,
    fmt: str = "lora",
) -> Path:
    """Export the BADIT adapter of a run folder (or of an adapter folder) with a fixed routing."""
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    if task is not None and weights is not None:
        raise ExportError("give --task or --weights, not both (neither: uniform routing)")
    source = Path(source)
    if (source / CONFIG_FILE).is_file():
        config = load_run_config(source)
        adapter_dir = require_adapter(final_adapter_dir(source, config), source)
        base, tokenizer = load_base_model(config)
    elif (source / ADAPTER_CONFIG_FILE).is_file():
        if task is not None:
            raise ExportError(f"{source}: --task needs a run folder (its tasks' prompts); use --weights")
        config, adapter_dir = None, source
        base_name = json.loads((source / ADAPTER_CONFIG_FILE).read_text()).get("base_model_name_or_path")
        if not base_name:
            raise ExportError(
                f"{source / ADAPTER_CONFIG_FILE}: no base_model_name_or_path to load the base from"
            )
        base, tokenizer = load_model_and_tokenizer(base_name, "float32", False, None)
    else:
        raise RunError(
            f"{source}: neither a run folder ({CONFIG_FILE}) nor an adapter folder ({ADAPTER_CONFIG_FILE})"
        )
    check_adapter_folder(adapter_dir)
    model = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    if not badit_layers(model):
        raise ExportError(
            f"{adapter_dir}: not a BADIT adapter (export is for BADIT; a LoRA folder is served as is)"
        )
    routing: Routing = None
    if weights is not None:
        routing = parse_weights(weights)
    elif task is not None:
        known = task_names(config)
        if task not in known:
            raise ExportError(f"--task {task!r}: the run has tasks {', '.join(known)}")
        routing = task_routing(config, model, tokenizer, [task])[task]
    if fmt == "lora":
        return export_lora(model, output, routing)
    return export_merged(model, output, routing, tokenizer=tokenizer)
