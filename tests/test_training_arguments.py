"""Every TrainingArguments field under `training:`: names, managed fields and values checked by
transformers' own dataclass."""

from __future__ import annotations

import importlib.util

import pytest

from badit.training.arguments import MANAGED, ArgumentError, argument_types, check_arguments, check_reporting


def test_fields_come_from_the_dataclass():
    fields = argument_types()
    assert {"optim", "adam_beta2", "push_to_hub", "torch_compile", "report_to"} <= set(fields)
    assert set(MANAGED) <= set(fields)  # every refused name is a real field


def test_valid_fields_pass_and_bad_ones_name_the_field():
    check_arguments({"optim": "adafactor", "adam_beta2": 0.99, "logging_first_step": False})
    cases = [
        ({"optimizer": "adamw_torch"}, "optimizer", "is not a TrainingArguments field"),
        ({"output_dir": "x"}, "output_dir", "is set by badit: the run folder is output_dir at the top level"),
        ({"bf16": True}, "bf16", "use training.mixed_precision: bf16"),
        (
            {"optim": "adamw_nonsense"},
            "optim",
            "rejects 'adamw_nonsense': adamw_nonsense is not a valid Optim",
        ),
        ({"save_strategy": "sometimes"}, "save_strategy", "is not a valid SaveStrategy"),
        (
            {"load_best_model_at_end": True},
            "load_best_model_at_end",
            "rejects True: --load_best_model_at_end requires",
        ),
    ]
    for extra, field, message in cases:
        with pytest.raises(ArgumentError, match=message) as excinfo:
            check_arguments(extra)
        assert excinfo.value.field == field


def test_reporting_integrations_must_be_known_and_installed():
    check_reporting(["none"])
    with pytest.raises(ArgumentError, match="'tensorbored' is not an integration transformers knows"):
        check_reporting(["tensorbored"])
    if importlib.util.find_spec("wandb") is None:
        with pytest.raises(ArgumentError, match=r"'wandb' is not installed here \(pip install wandb\)"):
            check_reporting(["wandb"])
    else:
        check_reporting(["wandb"])
