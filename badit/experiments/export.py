"""`badit export`: a run's (or an adapter folder's) BADIT adapter as a plain LoRA folder or a merged model.

The routing is fixed: a task's mean routing over its training prompts (`--task`), given weights
(`--weights`), or uniform. The library functions are in badit/adapter/export.py.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from badit.adapter.card import public_model_name
from badit.adapter.export import (
    ExportError,
    Routing,
    badit_layers,
    export_lora,
    export_merged,
    mean_routing,
    routing_distance,
)
from badit.data import DataCollator, DataError, encode_prompts
from badit.experiments.folder import (
    ADAPTER_CONFIG_FILE,
    CONFIG_FILE,
    RunError,
    RunFolder,
    RunLock,
    load_adapter,
)
from badit.experiments.stage import load_run_tasks, prompt_template, task_examples, task_names
from badit.names import EXPORT_FORMATS
from badit.outputs import check_output_folder
from badit.training.model_loading import (
    ModelNotFoundError,
    load_model,
    load_tokenizer,
    resolve_model_path,
)

FORMATS = EXPORT_FORMATS
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
        examples = task_examples(config, tokenizer, task)[:examples_per_task]
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
    weights = torch.tensor(values)  # float32, as the adapter computes
    if not bool(torch.isfinite(weights).all()):
        raise ExportError(f"--weights {text!r}: give finite numbers (float32: below 3.4e38)")
    return weights


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DISTANCE_PROMPTS_PER_TASK = 8  # test prompts per task for the live-vs-fixed routing distance


def stored_dtype(name_or_path: str) -> torch.dtype:
    """The dtype a model's config.json records (its weights as published); float32 when it records none."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(resolve_model_path(name_or_path))
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(dtype, str):
        dtype = DTYPES.get(dtype)
    return dtype if isinstance(dtype, torch.dtype) else torch.float32


def test_prompt_batches(config, tokenizer, per_task: int = DISTANCE_PROMPTS_PER_TASK) -> list[dict]:
    """The run's evaluation prompts (the first ``per_task`` of each task), as right-padded batches whose
    routers pool the whole prompt (prompt_mask), as generation does."""
    _, test = load_run_tasks(config, task_names(config))
    test = [replace(task, instances=task.instances[:per_task]) for task in test]
    ids = encode_prompts(tokenizer, test, prompt_template(config.data), config.data.max_source_length)
    collate = DataCollator(pad_token_id=tokenizer.pad_token_id)
    batches = []
    for start in range(0, len(ids), BATCH_SIZE):
        batch = collate([{"input_ids": row} for row in ids[start : start + BATCH_SIZE]])
        batch["prompt_mask"] = batch["attention_mask"].bool()
        batches.append(batch)
    return batches


def export_card(
    fmt: str,
    base: str | None,
    source: Path,
    adapter_config,
    routing_text: str,
    distance: dict | None,
    not_measured: str = "",
) -> str:
    """The model card (README.md) of an exported folder: what it is, how to load it, and how far its
    fixed routing is from the live router (measured on the run's test prompts)."""
    import yaml

    from badit import __version__

    k, r = adapter_config.num_experts, adapter_config.r
    targets = adapter_config.target_modules
    targets = targets if isinstance(targets, str) else ", ".join(sorted(targets))
    meta = {"base_model": base, "library_name": "peft" if fmt == "lora" else "transformers"}
    meta["tags"] = ["badit", "lora"] if fmt == "lora" else ["badit", "merged"]
    what = (
        f"a plain PEFT LoRA of rank 2*K*r = {2 * k * r} (loads without badit)"
        if fmt == "lora"
        else "a full model with the adapter merged into its weights (plain transformers)"
    )
    load = (
        f'PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("{base}"), "path/to/this/folder")'
        if fmt == "lora"
        else 'AutoModelForCausalLM.from_pretrained("path/to/this/folder")'
    )
    lines = [
        "---",
        yaml.safe_dump({k_: v for k_, v in meta.items() if v is not None}, sort_keys=False).strip(),
        "---",
        "# BADIT adapter with a fixed routing",
        "",
        f"Exported by `badit export` (badit {__version__}) from `{source.name}`: a BADIT adapter (K = {k} experts "
        f"of rank r = {r}, target modules {targets}) with its router replaced by one "
        f"fixed mixing vector per layer ({routing_text}), written as {what}.",
        "",
        "```python",
        "from peft import PeftModel" if fmt == "lora" else "",
        "from transformers import AutoModelForCausalLM",
        "",
        f"model = {load}",
        "```",
        "",
        f"- base model: `{base or '(not recorded)'}`",
        "",
        "## Fixed routing vs the live router",
        "",
    ]
    if distance is None:
        lines.append(f"Not measured: {not_measured}.")
    else:
        n = int(distance["prompts"])
        lines.append(
            f"On the run's {n} test prompts (the first {DISTANCE_PROMPTS_PER_TASK} of each task), the "
            f"next-token logits at the end of the prompt differ from the live router's by at most "
            f"{distance['max_abs_logit']:.3g} (mean over prompts of each one's largest difference: "
            f"{distance['mean_max_abs_logit']:.3g}); the greedy next token is the same for "
            f"{round(distance['argmax_agreement'] * n)} of {n} prompts. The live BADIT adapter routes each "
            "prompt on itself; this export uses the same mixing weights for every prompt."
        )
    return "\n".join(line for line in lines if line is not None) + "\n"


def export(
    source: str | Path,
    output: str | Path,
    task: str | None = None,
    weights: str | None = None,
    fmt: str = "lora",
    base: str | None = None,
    dtype: str | None = None,
) -> tuple[Path, dict[str, float] | None]:
    """Export the BADIT adapter of a run folder (or of an adapter folder) with a fixed routing.

    ``base``: the base model to load (default: the run's model, or the adapter folder's recorded
    ``base_model_name_or_path``); the export records its public hub id (badit's converted embedded model
    -> HuggingFaceTB/SmolLM2-135M-Instruct). ``dtype`` (merged only): float32, bfloat16 or float16;
    default: the dtype the base model's config records. A LoRA export needs no tokenizer; a merged one
    gets the base's tokenizer when it has one. From a run folder, the distance between the live router
    and the fixed routing is measured on the run's test prompts and written into the export's model card.
    Returns the folder written and that distance (`routing_distance`; None from an adapter folder).
    """
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    if task is not None and weights is not None:
        raise ExportError("give --task or --weights, not both (neither: uniform routing)")
    if dtype is not None and fmt != "merged":
        raise ExportError(
            "--dtype is for --format merged (a LoRA export keeps the adapter's float32 factors)"
        )
    if dtype is not None and dtype not in DTYPES:
        raise ExportError(f"--dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    source = Path(source)
    check_output_folder(output, "export", reads=(source,))  # before anything is loaded
    run = RunFolder(source)
    if not run.has_config():
        return _export(source, output, task, weights, fmt, base, dtype, run)
    with RunLock.for_reading(run.path):  # not while a training writes the adapter read here
        return _export(source, output, task, weights, fmt, base, dtype, run)


def _export(source, output, task, weights, fmt, base, dtype, run) -> tuple[Path, dict[str, float] | None]:
    """`export` once the output folder is checked (and a run folder locked)."""
    steps = tqdm(total=4, desc="export", unit="step", delay=2)  # shown only when it takes over 2 s
    config = tokenizer = None
    if run.has_config():
        config = run.config()
        if base is not None:
            config.model.name_or_path = base
        base_name = config.model.name_or_path
        model, tokenizer = run.load_trained(config)  # the tokenizer: task routing, test prompts
        adapter_dir = run.final_adapter(config)
    elif (source / ADAPTER_CONFIG_FILE).is_file():
        if task is not None:
            raise ExportError(f"{source}: --task needs a run folder (its tasks' prompts); use --weights")
        adapter_dir = source
        base_name = base or json.loads((source / ADAPTER_CONFIG_FILE).read_text()).get(
            "base_model_name_or_path"
        )
        if not base_name:
            raise ExportError(
                f"{source / ADAPTER_CONFIG_FILE}: no base_model_name_or_path to load the base from; "
                "name the base model with --base MODEL (a folder or hub name)"
            )

        def load_base():
            base_tokenizer = None
            if fmt == "merged":  # copied beside the merged model when the base has one
                try:
                    base_tokenizer = load_tokenizer(base_name)
                except (OSError, ValueError):
                    pass
            return _load_base(base_name), base_tokenizer

        model, tokenizer = load_adapter(
            load_base, adapter_dir, "restore the folder or export another adapter"
        )
    else:
        raise RunError(
            f"{source}: neither a run folder ({CONFIG_FILE}) nor an adapter folder ({ADAPTER_CONFIG_FILE})"
        )
    steps.update()
    if not badit_layers(model):
        raise ExportError(
            f"{adapter_dir}: not a BADIT adapter (export is for BADIT; a LoRA folder is served as is)"
        )
    steps.update()
    routing: Routing = None
    routing_text = "uniform: every expert weighted equally"
    if weights is not None:
        routing = parse_weights(weights)
        routing_text = f"the weights {weights} in every layer"
    elif task is not None:
        known = task_names(config)
        if task not in known:
            raise ExportError(f"--task {task!r}: the run has tasks {', '.join(known)}")
        routing = task_routing(config, model, tokenizer, [task])[task]
        routing_text = f"task `{task}`'s mean routing over its first 64 training prompts"
    distance, not_measured = (
        None,
        "exported from an adapter folder, which has no test prompts; export from the run folder to measure it",
    )
    if config is not None:
        try:
            batches = test_prompt_batches(config, tokenizer)
        except (DataError, OSError) as error:  # e.g. a copied run whose data folder is not here
            not_measured = f"the run's test data cannot be read here ({error})"
        else:
            distance = routing_distance(model, batches, routing)
    steps.update()
    public = public_model_name(base_name)
    readme = export_card(
        fmt, public, source, model.peft_config["default"], routing_text, distance, not_measured
    )
    if fmt == "lora":
        path = export_lora(model, output, routing, base_model_name_or_path=public, readme=readme)
    else:
        target = DTYPES[dtype] if dtype is not None else stored_dtype(base_name)
        path = export_merged(model, output, routing, tokenizer=tokenizer, dtype=target, readme=readme)
    steps.update()
    steps.close()
    return path, distance


def _load_base(name_or_path: str):
    """The base model alone (float32, for an exact merge); a one-line error when it cannot be loaded."""
    try:
        return load_model(name_or_path, "float32")
    except (OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelNotFoundError(
            f"base model {name_or_path!r}: cannot load it ({first}); name the base with --base MODEL "
            "(a folder, a hub name reachable from here, or smollm2-135m-instruct)"
        ) from None


def push_export(folder: str | Path, repo_id: str, private: bool = False) -> str:
    """Upload an export folder (its model card included, the export marker not) to the Hugging Face hub
    repository ``repo_id``, created if missing (``private``); returns the repository's URL. Uses the token
    of `huggingface-cli login` / HF_TOKEN; a refusal of the hub is one line naming the repository."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    from badit.outputs import OUTPUT_MARKER

    api = HfApi()
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            ignore_patterns=[OUTPUT_MARKER],
            commit_message="badit export",
        )
    except (HfHubHTTPError, OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ExportError(
            f"--push-to-hub {repo_id}: the hub refused ({first}); log in (`huggingface-cli login` or HF_TOKEN) "
            f"with write access, or push {folder} later"
        ) from None
    return str(url)
