"""Every `transformers.TrainingArguments` field under `training:`, checked by transformers itself.

badit's own training fields (learning_rate, mixed_precision, ...) keep their meaning; any other
field of TrainingArguments (`optim`, `adam_beta2`, `torch_compile`, `push_to_hub`, ...) is passed to
the Trainer as given. Names are checked against the dataclass, values against its type hints (by
the run config's coercion) and then by constructing `TrainingArguments`, whose `__post_init__`
checks enumerations (`optim`, `lr_scheduler_type`, ...) and combinations (`load_best_model_at_end`
needs matching strategies). A few fields are badit's to set; they are refused with the field to use.
"""

from __future__ import annotations

import dataclasses
import functools
import tempfile
import typing
from collections.abc import Mapping
from typing import Any

MANAGED = {
    "output_dir": "the run folder is output_dir at the top level (checkpoints go to RUN/checkpoints)",
    "seed": "set seed at the top level: it seeds the adapter, the data order and the split",
    "data_seed": "set seed at the top level: it seeds the adapter, the data order and the split",
    "bf16": "use training.mixed_precision: bf16",
    "fp16": "use training.mixed_precision: fp16",
    "activation_checkpointing": "use training.gradient_checkpointing: true",
    "remove_unused_columns": "badit keeps its task_ids column for the sampler (dropped before the forward pass)",
    "resume_from_checkpoint": "continue a run with `badit train RUN --resume`",
    "eval_strategy": "badit evaluates by generation after training (the evaluation: section); "
    "the Trainer gets no evaluation set",
    "push_to_hub": "the Trainer would push RUN/checkpoints (to a repo named 'checkpoints'); push the trained "
    "adapter with its model card: `badit export RUN --push-to-hub OWNER/NAME`",
}
"""TrainingArguments fields that badit sets itself, and what to use instead."""


class ArgumentError(ValueError):
    """A TrainingArguments field that cannot be used: `field` (None: the combination) and the reason."""

    def __init__(self, field: str | None, message: str):
        super().__init__(message)
        self.field = field


@functools.cache
def argument_types() -> dict[str, Any]:
    """{field: type hint} of every TrainingArguments field that can be set (badit's managed ones too)."""
    from transformers import TrainingArguments

    hints = typing.get_type_hints(TrainingArguments)
    return {f.name: hints[f.name] for f in dataclasses.fields(TrainingArguments) if f.init}


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _construct(values: Mapping[str, Any]):
    from transformers import TrainingArguments

    with tempfile.TemporaryDirectory() as folder:  # TrainingArguments writes nothing; a path is needed
        return TrainingArguments(**{"output_dir": folder, "use_cpu": True, "report_to": "none", **values})


def check_arguments(extra: Mapping[str, Any]) -> None:
    """Raise ArgumentError for a field of `extra` that TrainingArguments does not have, that badit sets
    itself, or whose value TrainingArguments rejects (alone, or together with the others)."""
    fields = argument_types()
    for name, value in extra.items():
        if name in MANAGED:
            raise ArgumentError(name, f"is set by badit: {MANAGED[name]}")
        if name not in fields:
            raise ArgumentError(name, "is not a TrainingArguments field")
        try:
            _construct({name: value})
        except (ValueError, TypeError, ImportError) as error:
            raise ArgumentError(name, f"TrainingArguments rejects {value!r}: {_first_line(error)}") from None
    try:
        _construct(extra)
    except (ValueError, TypeError, ImportError) as error:
        raise ArgumentError(
            None, f"TrainingArguments rejects the combination: {_first_line(error)}"
        ) from None


def check_reporting(report_to: list[str]) -> None:
    """ArgumentError when a requested logging integration (wandb, mlflow, ...) is unknown or not installed."""
    from transformers.integrations import get_available_reporting_integrations
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    installed = get_available_reporting_integrations()
    for name in report_to:
        if name in ("none", "all"):
            continue
        if name not in INTEGRATION_TO_CALLBACK:
            known = ", ".join(sorted(INTEGRATION_TO_CALLBACK))
            raise ArgumentError("report_to", f"{name!r} is not an integration transformers knows ({known})")
        if name not in installed:
            raise ArgumentError(
                "report_to",
                f"{name!r} is not installed here (pip install {name.replace('_', '-')}); installed: "
                f"{', '.join(installed) or 'none'}",
            )
