"""benchmarks/gpu_evidence.py: the plan becomes one `badit train` per method with its learning rate
and the tiny-budget overrides, the commands parse as run configs, and a run folder's metrics.json
becomes the JSON's row."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

from badit.experiments.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("gpu_evidence", ROOT / "benchmarks" / "gpu_evidence.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _args(**values):
    return argparse.Namespace(**{"data": None, "tasks": None, "examples": None, "max_steps": None, **values})


def test_plan_gives_each_method_its_learning_rate_and_a_config_that_loads(tmp_path):
    script = _script()
    plan = script.load_plan(ROOT / "benchmarks" / "gpu_evidence.yaml")
    assert set(plan["learning_rates"]) == set(script.METHODS)
    for method in script.METHODS:
        overrides = script.run_overrides(plan, method, tmp_path, _args(examples=4, max_steps=2))
        argv = script.command(plan, overrides, resume=False)
        assert argv[3:5] == ["train", plan["base"]]
        config = load_config(plan["base"], argv[5:])
        assert config.method.name == method
        assert config.training.learning_rate == plan["learning_rates"][method]
        assert config.training.max_steps == 2 and config.training.num_train_epochs == 3
        assert config.data.max_train_examples_per_task == 4 == config.evaluation.max_examples_per_task
        assert config.data.group_by_length and config.training.per_device_train_batch_size == 32
        assert config.output_dir == str(tmp_path / method)


def test_first_tasks_and_a_run_folder_summary(tmp_path):
    from badit.data.synthetic import write_demo_tasks

    script = _script()
    write_demo_tasks(tmp_path / "data", train_per_task=2, test_per_task=1)
    assert script.first_tasks(str(tmp_path / "data"), 2) == ["demo_add_one", "demo_copy_words"]
    run = tmp_path / "lora"
    run.mkdir()
    metrics = {
        "tasks": {"a": {"rougeL": 50.0, "exact_match": 40.0}, "b": {"rougeL": 70.0, "exact_match": 60.0}},
        "average": {"rougeL": 60.0, "exact_match": 50.0},
        "run": {"train_seconds": 10.0, "tokens_seen": 900, "padded_tokens": 1000, "tokens_per_second": 90.0},
    }
    (run / "metrics.json").write_text(json.dumps(metrics))
    row = script.summary(run, wall=12.34)
    assert row["rougeL"] == 60.0 and row["tasks"] == {"a": 50.0, "b": 70.0}
    assert row["positions_per_second"] == 100.0  # 1000 positions / 10 s
    assert row["wall_seconds"] == 12.3
