"""``badit eval RUN``: evaluate a finished run's adapter(s) again, e.g. on more examples."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

from badit.data.files import atomic_write_jsonl
from badit.evaluation import metrics_from_records
from badit.experiments.config import ConfigError
from badit.experiments.folder import RunError, RunFolder, RunLock
from badit.experiments.stage import data_source, evaluate_model, load_run_tasks, task_names
from badit.outputs import check_output_folder, mark_output_folder


def reevaluate(
    run_dir: str | Path,
    overrides: Sequence[str] = (),
    output_dir: str | Path | None = None,
    as_run: bool = False,
) -> dict:
    """Evaluate a finished run's adapter(s) again; ``overrides`` change the ``evaluation.*`` (or
    ``data.*``) settings. Writes metrics.json / predictions.jsonl into ``output_dir`` (default: the run
    folder).

    ``as_run``: ``output_dir`` becomes a run folder of its own (config.yaml with the overrides applied,
    the marker), whose metrics.json keeps the training record of the run that trained the adapter and
    names it (``run.trained_in``): ``badit sweep`` scores its winning selection run on test this way
    instead of training the same run again."""
    run = RunFolder(run_dir)
    _check_overrides(overrides)
    config = run.config(overrides)
    out = RunFolder(output_dir) if output_dir else run
    elsewhere = out.path.resolve() != run.path.resolve()
    if elsewhere and not as_run:  # never over another run, a folder holding this one, or a user's files
        check_output_folder(out.path, "eval", reads=(run.path,))
    created = not out.path.exists()
    try:
        with (
            RunLock.for_reading(run.path) if elsewhere else RunLock(run.path),
            RunLock(out.path) if elsewhere else nullcontext(),
        ):
            # the run is read (no training may write it meanwhile) and `out` written by this process only
            if elsewhere and not as_run:
                out.path.mkdir(parents=True, exist_ok=True)
                mark_output_folder(out.path, "eval")
            return _reevaluate(run, config, out, as_run)
    finally:
        if created and elsewhere:
            out.remove_lock_only_folder()


def _reevaluate(run: RunFolder, config, out: RunFolder, as_run: bool) -> dict:
    """The evaluation itself, while ``out`` is locked."""
    info: dict = {"reevaluated": True}
    if as_run and out.path.resolve() != run.path.resolve():
        import dataclasses

        trained = run.metrics().get("run", {}) if run.has_metrics() else {}
        info = {**trained, **info, "trained_in": str(run.path)}
        out.prepare(dataclasses.replace(config, output_dir=str(out.path.resolve())), resume=True)
    out.path.mkdir(parents=True, exist_ok=True)
    source = data_source(config)
    _, eval_tasks = load_run_tasks(config, task_names(config, source), source)

    if config.setting == "single":
        for task in eval_tasks:
            model, tokenizer = run.load_trained(config, run.task_stage(task.name).adapter)
            evaluate_model(config, model, tokenizer, [task], out.task_stage(task.name))
        records = [r for t in eval_tasks for r in out.task_stage(t.name).predictions()]
        atomic_write_jsonl(out.predictions_file, records)
        metrics = metrics_from_records(records)
    else:
        # continual: the score matrix needs every stage, so the run's is kept (read before `out`, which may
        # be the run folder, is written; a damaged metrics.json is rewritten without it)
        continual = None
        if config.setting == "continual" and run.has_metrics():
            try:
                continual = run.metrics().get("continual")
            except RunError:
                pass
        model, tokenizer = run.load_trained(config)
        metrics = evaluate_model(config, model, tokenizer, eval_tasks, out)
        if continual is not None:
            metrics["continual"] = continual
    return out.write_results(config, metrics, info)


def evaluate_adapter(
    adapter_dir: str | Path,
    data: str | None,
    output_dir: str | Path | None,
    base: str | None = None,
    overrides: Sequence[str] = (),
) -> dict:
    """Score an adapter trained outside badit (TRL, an own loop: any PEFT adapter folder, BADIT or LoRA)
    as `badit eval` scores a run: the test split of ``data`` (a data.path), greedy generation, ROUGE-L
    and exact match, into the new (or earlier eval) folder ``output_dir``: metrics.json,
    predictions.jsonl, summary.md. ``base``: the base model (default: the adapter's recorded
    base_model_name_or_path); ``overrides``: evaluation.* and data.* fields (e.g. data.use_chat_template=true
    for an adapter trained on chat-templated prompts)."""
    import json

    from badit.experiments.folder import ADAPTER_CONFIG_FILE, CONFIG_FILE, load_adapter, resolve_paths
    from badit.experiments.stage import load_base_model

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / ADAPTER_CONFIG_FILE).is_file():
        raise RunError(
            f"{adapter_dir}: not a run folder (no {CONFIG_FILE}; run `badit train CONFIG` first) nor an adapter "
            f"folder ({ADAPTER_CONFIG_FILE})"
        )
    if not data or output_dir is None:
        raise RunError(
            f"{adapter_dir} is an adapter folder, not a run: give the data to score it on and where the scores "
            "go (`badit eval ADAPTER --data PATH --output DIR`)"
        )
    recorded = json.loads((adapter_dir / ADAPTER_CONFIG_FILE).read_text(encoding="utf-8"))
    base = base or recorded.get("base_model_name_or_path")
    if not base:
        raise RunError(f"{adapter_dir / ADAPTER_CONFIG_FILE} names no base model; name it with --base MODEL")
    _check_overrides(overrides)
    out = RunFolder(check_output_folder(output_dir, "eval", reads=(adapter_dir,)))
    method = str(recorded.get("peft_type", "lora")).lower()
    fields = {
        "name": adapter_dir.name,
        "output_dir": str(out.path),
        "model": {"name_or_path": base},
        "data": {"path": data},
        "method": {"name": method if method in ("badit", "hydralora") else "lora"},
    }
    config = load_config_dict(fields, overrides)
    config = resolve_paths(config)
    created = not out.path.exists()
    try:
        with RunLock(out.path):
            mark_output_folder(out.path, "eval")
            fix = "give a PEFT adapter folder saved with save_pretrained for this base model"
            model, tokenizer = load_adapter(lambda: load_base_model(config), adapter_dir, fix)
            source = data_source(config)
            _, eval_tasks = load_run_tasks(config, task_names(config, source), source)
            metrics = evaluate_model(config, model, tokenizer, eval_tasks, out)
            return out.write_results(
                config, metrics, {"reevaluated": True, "adapter": str(adapter_dir.resolve())}
            )
    finally:
        if created:
            out.remove_lock_only_folder()


def _check_overrides(overrides: Sequence[str]) -> None:
    for override in overrides:
        if not override.split("=", 1)[0].startswith(("evaluation.", "data.")):
            raise ConfigError(
                f"override {override!r}: badit eval only changes evaluation.* and data.* settings"
            )


def load_config_dict(fields: dict, overrides: Sequence[str]):
    """A RunConfig from ``fields`` with ``section.field=value`` ``overrides`` applied (checked as a file's)."""
    from badit.experiments.config import apply_override, from_dict

    for override in overrides:
        apply_override(fields, override)
    return from_dict(fields, source="badit eval")
