"""`badit data check` starts without torch (a missing file answers at once), `badit train --name value`
is read as training.name=value, and the router warning names fields that exist."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from badit.cli.main import _dashed_training_fields, main
from tests.helpers import REPO

HEAVY = ("torch", "transformers", "peft")


def data_check_in_a_fresh_interpreter(path, cwd) -> tuple[int, str, list[str]]:
    code = f"""
import json, sys
from badit.cli.main import main
code = main(["data", "check", {str(path)!r}])
print(json.dumps([code, [m for m in {HEAVY!r} if m in sys.modules]]))
"""
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    code, heavy = json.loads(done.stdout.strip().splitlines()[-1])
    return code, done.stdout, heavy


def test_data_check_imports_no_torch_for_a_missing_file_or_the_demo_data(tmp_path):
    from badit.data.synthetic import write_demo_tasks

    code, out, heavy = data_check_in_a_fresh_interpreter(tmp_path / "missing.jsonl", tmp_path)
    assert (code, heavy) == (1, []) and "no such file or folder" in out
    write_demo_tasks(tmp_path / "demo", train_per_task=20, test_per_task=5)
    code, out, heavy = data_check_in_a_fresh_interpreter(tmp_path / "demo", tmp_path)
    assert (code, heavy) == (0, []) and "6 tasks, 0 problems" in out


def test_dashed_training_fields_are_overrides():
    assert _dashed_training_fields(
        ["--learning_rate", "1e-4", "method.r=8", "--lr-scheduler-type=linear"]
    ) == [
        "training.learning_rate=1e-4",
        "method.r=8",
        "training.lr_scheduler_type=linear",
    ]
    assert _dashed_training_fields(["--gradient_checkpointing"]) == ["training.gradient_checkpointing=true"]


def test_train_reads_a_dashed_field_and_hints_the_form_for_others(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("name: x\n", encoding="utf-8")
    # read as training.learning_rate: the config check then names that field
    assert main(["train", str(config), "--learning_rate", "fast"]) == 2
    assert "training.learning_rate" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        main(["train", str(config), "--rank", "8"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unrecognized option --rank" in err and "method.r=8" in err


def test_router_warning_names_real_config_fields():
    from badit.analysis.router_health import routing_problem
    from badit.experiments.config import TrainingConfig
    from badit.training.methods import MethodConfig

    layers = {"a": {"top_share": 0.2, "deviation": 0.0, "entropy": 1.0, "min_load": 0.2}}
    warning = routing_problem(layers)
    assert "method.router_lr_multiplier" in warning and "training.learning_rate" in warning
    assert "router_lr_multiplier" in {f.name for f in dataclasses.fields(MethodConfig)}
    assert "learning_rate" in {f.name for f in dataclasses.fields(TrainingConfig)}
