"""``badit merge RUN --method ties|task-arithmetic --output DIR``: the one-LoRA-per-task adapters of a
``setting: single`` run merged into one adapter with PEFT's ``add_weighted_adapter``, saved and evaluated
on every task as a multi-task run folder (so ``badit compare`` / ``badit report`` read it like any other,
and its interference score against the single run it came from is the cost of merging).

- ``task-arithmetic`` (Ilharco et al., "Editing Models with Task Arithmetic", ICLR 2023):
  ΔW = λ Σ_t ΔW_t, exactly, through PEFT's ``cat`` combination (the task adapters' A and B stacked:
  rank Σ r_t). PEFT's ``linear`` would combine A's and B's separately, which is not Σ_t B_t A_t.
- ``ties`` (Yadav et al., "TIES-Merging: Resolving Interference When Merging Models", NeurIPS 2023):
  trim each ΔW_t to its largest ``density`` fraction of entries, elect each entry's sign by total mass,
  average the entries that agree with it (disjoint mean), times λ; PEFT's ``ties_svd`` does this on the
  full ΔW_t of every layer (the paper's task vectors are weight deltas) and factors the result back to
  rank ``svd_rank`` (default Σ r_t). The truncation is an approximation; its relative error per layer is
  measured and recorded (``merge.svd_relative_error``).

Defaults and their sources are in docs/method.md, "Merged single-task LoRAs". Only ``lora`` runs:
PiSSA/OLoRA adapters each move the base weight (their residual), so their deltas do not add.
torch and PEFT are imported inside the functions: ``badit --help`` reads the defaults without them.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from badit.errors import BaditError
from badit.names import MERGE_METHODS

COMBINATION_TYPES = {"task-arithmetic": "cat", "ties": "ties_svd"}
"""``--method`` (``badit.names.MERGE_METHODS``) -> PEFT's ``combination_type``."""
DEFAULT_WEIGHT = 1.0
"""λ, the same for every task: the plain sum of task vectors (task arithmetic) or the disjoint mean (TIES)."""
DEFAULT_DENSITY = 0.2
"""TIES: the fraction of each task delta's entries kept (the TIES code's ``topk20``)."""
MERGED_ADAPTER = "default"  # PEFT saves the "default" adapter at the folder's top level


class MergeError(BaditError, ValueError):
    """The run or the options cannot be merged as asked (one line, with the fix)."""


def check_options(method: str, weight: float, density: float) -> None:
    if method not in MERGE_METHODS:
        raise MergeError(f"--method {method!r} is unknown; use one of {', '.join(MERGE_METHODS)}")
    if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight > 0):
        raise MergeError(f"--weight must be a positive finite number (λ), got {weight}")
    if not (isinstance(density, (int, float)) and 0 < density <= 1):
        raise MergeError(f"--density must be in (0, 1] (the fraction of entries TIES keeps), got {density}")


def merge_loaded(
    model,
    tasks: list[str],
    method: str,
    weight: float = DEFAULT_WEIGHT,
    density: float = DEFAULT_DENSITY,
    svd_rank: int | None = None,
) -> dict:
    """Merge the LoRA adapters named ``tasks`` (loaded in ``model``) into adapter ``default`` with PEFT's
    ``add_weighted_adapter``, delete them, and return the record of what was done.

    ``svd_rank`` (ties only): rank of the merged adapter, default Σ r_t (capped by each layer's size).
    """
    from peft.tuners.lora import LoraLayer

    check_options(method, weight, density)
    if len(tasks) < 2:
        raise MergeError(f"merging needs at least two task adapters, got {len(tasks)}")
    ranks = [model.peft_config[t].r for t in tasks]
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    record = {"method": method, "weight": weight, "tasks": list(tasks), "task_ranks": ranks}
    kwargs = {}
    if method == "ties":
        limit = min(min(layer.in_features, layer.out_features) for layer in layers)
        svd_rank = min(svd_rank or sum(ranks), limit)
        kwargs = {"svd_rank": svd_rank, "density": density, "majority_sign_method": "total"}
        record.update(density=density, majority_sign_method="total", svd_rank=svd_rank)
    combination = COMBINATION_TYPES[method]
    model.add_weighted_adapter(
        adapters=list(tasks),
        weights=[weight] * len(tasks),
        adapter_name=MERGED_ADAPTER,
        combination_type=combination,
        **kwargs,
    )
    record["combination_type"] = combination
    if method == "ties":
        errors = [_ties_svd_error(layer, tasks, weight, density) for layer in layers]
        errors = [e for e in errors if e is not None]
        record["svd_relative_error"] = {"max": max(errors), "mean": sum(errors) / len(errors)}
    model.set_adapter(MERGED_ADAPTER)
    for task in tasks:
        model.delete_adapter(task)
    _check_finite(model, record, weight)
    return record


def _check_finite(model, record: dict, weight: float) -> None:
    """MergeError (nothing written yet) when the merged adapter or its record holds NaN or inf: a weight
    so large that λ·ΔW overflows float32 (1e308 gives inf factors; 1e30 with ties a NaN SVD error)."""
    import torch

    bad = next(
        (
            name
            for name, p in model.named_parameters()
            if MERGED_ADAPTER in name and not torch.isfinite(p).all()
        ),
        None,
    )
    errors = record.get("svd_relative_error", {})
    if bad is not None or not all(math.isfinite(v) for v in errors.values()):
        where = f"tensor {bad}" if bad is not None else f"svd_relative_error {errors}"
        raise MergeError(
            f"--weight {weight:g} overflows: the merged adapter's {where} is not finite; use a weight near 1 "
            "(task arithmetic's λ is usually 0.3-2); nothing was written"
        )


def _ties_svd_error(layer, tasks: list[str], weight: float, density: float) -> float | None:
    """||ΔW_merged - TIES(ΔW_t)||_F / ||TIES(ΔW_t)||_F of one LoRA layer: what the rank truncation lost."""
    import torch
    from peft.utils.merge_utils import ties

    if MERGED_ADAPTER not in layer.lora_A:
        return None
    with torch.no_grad():
        exact = ties(
            [layer.get_delta_weight(t) for t in tasks],
            torch.full((len(tasks),), float(weight)),
            density,
            "total",
        )
        merged = layer.get_delta_weight(MERGED_ADAPTER)
        norm = exact.norm()
    return float((merged - exact).norm() / norm) if norm > 0 else 0.0


def merged_config(config, output_dir: Path, method: str):
    """The merged run's config: the single run's, as a multi-task run in ``output_dir``."""
    return dataclasses.replace(
        config, name=f"{config.name}-{method}", setting="multitask", output_dir=str(output_dir)
    )


def merge_run(
    run_dir: str | Path,
    output_dir: str | Path,
    method: str,
    weight: float = DEFAULT_WEIGHT,
    density: float = DEFAULT_DENSITY,
    overwrite: bool = False,
    overrides: tuple[str, ...] = (),
) -> dict:
    """Merge the task adapters of the single-task run ``run_dir`` into a run folder ``output_dir``: the
    merged adapter (``adapter/``), ``merge.json`` (what was merged, how), and its evaluation on every task
    (predictions, metrics.json, summary.md). ``overrides``: ``evaluation.field=value`` changes of the
    evaluation (e.g. ``evaluation.split=dev`` to choose λ on dev). Returns the metrics. Nothing is
    written before the inputs are checked and the merge is done; a failure afterwards removes the new
    folder."""
    from peft import PeftModel

    from badit.adapter.integrity import check_adapter_folder
    from badit.data.files import atomic_write_json
    from badit.experiments.folder import RunFolder, RunLock, resolve_paths
    from badit.experiments.stage import evaluate_model, load_base_model, load_run_tasks, task_names
    from badit.training.trainer import save_adapter

    check_options(method, weight, density)
    run_dir, output_dir = Path(run_dir).resolve(), Path(output_dir).resolve()
    run, out = RunFolder(run_dir), RunFolder(output_dir)
    check_overrides(overrides)
    config = run.config(overrides)  # the single run's config.yaml with the evaluation overrides
    if config.setting != "single":
        raise MergeError(
            f"{run_dir} is a {config.setting} run; badit merge needs a `setting: single` run (one adapter per "
            "task): train one with setting=single"
        )
    if config.method.name != "lora":
        raise MergeError(
            f"{run_dir} trained method {config.method.name!r}; badit merge merges `lora` adapters (PiSSA/OLoRA "
            "move the base weight, BADIT routes per sequence): train the single run with method.name=lora"
        )
    if output_dir == run_dir or run_dir in output_dir.parents:
        raise MergeError(
            f"--output {output_dir} lies inside the run it merges; choose a folder outside {run_dir}"
        )
    names = task_names(config)
    adapters = {name: run.require_adapter(run.task_stage(name).adapter) for name in names}
    for folder in adapters.values():
        check_adapter_folder(folder)
    merged = resolve_paths(merged_config(config, output_dir, method))
    out.check_writable()
    _, eval_tasks = load_run_tasks(merged, names)
    base, tokenizer = load_base_model(merged)
    model = PeftModel.from_pretrained(base, str(adapters[names[0]]), adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(str(adapters[name]), adapter_name=name)
    record = {**merge_loaded(model, names, method, weight, density), "source": str(run_dir)}
    model.eval()
    try:
        with RunLock(output_dir):  # a live run there (training, evaluating) is never replaced
            if out.has_config() and not overwrite:
                raise MergeError(
                    f"--output {output_dir} already holds a run; pass --overwrite to replace it (only a run badit "
                    "created, and not while another badit process writes it) or choose another folder"
                )
            fresh = overwrite or not out.has_config()
            out.prepare(merged, overwrite=overwrite)
            try:
                save_adapter(model, tokenizer, out.adapter)
                atomic_write_json(out.merge_file, record)
                evaluate_model(merged, model, tokenizer, eval_tasks, out)
                return out.write_results(merged, out.metrics(), {"merge": record})
            except BaseException:
                if fresh and out.is_run():
                    out.remove(keep_lock=True)
                raise
    finally:
        out.remove_lock_only_folder()  # a refused or failed merge leaves no empty folder


def check_overrides(overrides: tuple[str, ...]) -> None:
    """MergeError unless every override is an ``evaluation.*`` field (the rest is the single run's)."""
    for override in overrides:
        if not override.strip().startswith("evaluation."):
            raise MergeError(
                f"override {override!r}: badit merge changes only evaluation fields (e.g. evaluation.split=dev); "
                "the rest is the single run's"
            )
