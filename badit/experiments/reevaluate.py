"""``badit eval RUN``: evaluate a finished run's adapter(s) again, e.g. on more examples."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from peft import PeftModel
from safetensors import SafetensorError

from badit.adapter.integrity import check_adapter_folder
from badit.data.files import atomic_write_jsonl
from badit.evaluation import metrics_from_records
from badit.experiments.config import ConfigError, apply_override, from_dict
from badit.experiments.folder import (
    CONFIG_FILE,
    METRICS_FILE,
    PREDICTIONS_FILE,
    RunError,
    final_adapter_dir,
    load_run_config,
    read_json,
    read_jsonl,
    require_adapter,
    write_results,
)
from badit.experiments.stage import data_source, evaluate_model, load_base_model, load_run_tasks, task_names


def reevaluate(
    run_dir: str | Path, overrides: Sequence[str] = (), output_dir: str | Path | None = None
) -> dict:
    """Evaluate a finished run's adapter(s) again; ``overrides`` change the ``evaluation.*`` (or
    ``data.*``) settings. Writes metrics.json / predictions.jsonl into ``output_dir`` (default: the run
    folder)."""
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
    source = data_source(config)
    _, eval_tasks = load_run_tasks(config, task_names(config, source), source)

    def trained_model(adapter_dir: Path):
        require_adapter(adapter_dir, run_dir)
        base, tokenizer = load_base_model(config)
        try:
            model = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
        except SafetensorError as error:
            raise RunError(
                f"{adapter_dir}: the adapter's weights are damaged or truncated ({error}); restore the folder "
                f"or train it again (`badit train {run_dir} --resume`)"
            ) from None
        check_adapter_folder(adapter_dir)  # readable, but not what was saved (manifest) or not finite
        return model, tokenizer

    if config.setting == "single":
        for task in eval_tasks:
            model, tokenizer = trained_model(run_dir / "tasks" / task.name / "adapter")
            evaluate_model(config, model, tokenizer, [task], out / "tasks" / task.name)
        records = [r for t in eval_tasks for r in read_jsonl(out / "tasks" / t.name / PREDICTIONS_FILE)]
        atomic_write_jsonl(out / PREDICTIONS_FILE, records)
        metrics = metrics_from_records(records)
    else:
        model, tokenizer = trained_model(final_adapter_dir(run_dir, config))
        metrics = evaluate_model(config, model, tokenizer, eval_tasks, out)
        previous = run_dir / METRICS_FILE
        if config.setting == "continual" and previous.is_file():  # the matrix needs every stage: keep it
            metrics["continual"] = read_json(previous).get("continual")
    return write_results(out, config, metrics, {"reevaluated": True})
