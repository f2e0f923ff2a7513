"""Training on tiny random models: every method learns, a killed run resumes exactly, the settings'
run folders hold what they promise, and the synthetic demo tasks are what they claim to be."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from badit.data import DataCollator, load_tasks, tokenize_tasks
from badit.data.synthetic import TASKS, generate_demo_tasks, write_demo_tasks
from badit.evaluation import continual_metrics
from badit.experiments.config import from_dict
from badit.experiments.folder import RunError, StageFolder
from badit.experiments.settings import run
from badit.experiments.stage import RunContext, adapter_model, prompt_template, train
from tests.helpers import KillAfterSave, SimulatedKill, tiny_run_config


def _fixed_batch_loss(model, tokenizer, tasks, config) -> float:
    examples = tokenize_tasks(
        tokenizer, tasks, prompt_template(config.data), max_source_length=120, max_target_length=24
    )
    batch = DataCollator(tokenizer.pad_token_id)(examples[:16])
    batch.pop("task_ids")
    model.eval()
    with torch.no_grad():
        return model(**batch).loss.item()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["badit", "svd-moe", "loramoe", "lora", "pissa", "olora"])
def test_each_method_trains_and_its_loss_decreases(tmp_path, method):
    config = from_dict(
        tiny_run_config(
            tmp_path, method, training={"max_steps": 8, "learning_rate": 1e-2}, method={"regroup_every": 4}
        )
    )
    model, tokenizer = adapter_model(config)
    tasks = load_tasks(config.data.path, "train")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(("lora_" in n) or ("badit_" in n) for n in trainable)
    before = _fixed_batch_loss(model, tokenizer, tasks, config)
    ctx = RunContext.create(config, [t.name for t in tasks], is_main=True)
    result = train(ctx, model, tokenizer, tasks, StageFolder(tmp_path / "stage"))
    after = _fixed_batch_loss(model, tokenizer, tasks, config)
    assert result.global_step == 8
    assert after < 0.9 * before, (before, after)
    assert (tmp_path / "stage" / "adapter" / "adapter_config.json").is_file()
    log = [
        json.loads(line)
        for line in (tmp_path / "stage" / "logs" / "train_log.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in log if "loss" in r] == list(range(1, 9))
    regroups = [r for r in log if "regroup/moved" in r]
    assert len(regroups) == (1 if method == "badit" else 0)  # step 4 only: regroup_until 0.5 of 8 steps


def _adapter_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


@pytest.mark.slow
def test_killed_lora_run_resumes_to_the_same_adapter(tmp_path):
    # In-process, for the LoRA family (no regroup state): killed after the checkpoint of step 4 of 8, a plain
    # rerun is refused and --resume ends bitwise equal to the uninterrupted run. A real SIGKILL at named
    # points of BADIT's checkpoint writes, and the regroup's restored gradient sums: tests/test_crash_safety.py.
    sections = dict(
        method={"lora_dropout": 0.1}, training={"max_steps": 8, "save_steps": 2, "save_total_limit": None}
    )
    whole = tiny_run_config(tmp_path, "lora", output_dir=str(tmp_path / "whole"), **sections)
    killed = tiny_run_config(tmp_path, "lora", output_dir=str(tmp_path / "killed"), **sections)
    run(from_dict(whole))
    with pytest.raises(SimulatedKill):
        run(from_dict(killed), extra_callbacks=[KillAfterSave(4)])
    assert (tmp_path / "killed" / "checkpoints" / "checkpoint-4").is_dir()
    assert not (tmp_path / "killed" / "adapter").exists()
    with pytest.raises(RunError, match="--resume"):
        run(from_dict(killed))
    metrics = run(from_dict(killed), resume=True)
    assert metrics["run"]["global_step"] == 8
    expected, resumed = _adapter_tensors(tmp_path / "whole"), _adapter_tensors(tmp_path / "killed")
    assert expected.keys() == resumed.keys() != set()
    for key in expected:
        assert torch.equal(resumed[key], expected[key]), key  # bitwise


@pytest.mark.slow
def test_resume_refuses_a_different_config(tmp_path):
    config = tiny_run_config(tmp_path, "lora", training={"max_steps": 2})
    run(from_dict(config))
    config["training"]["learning_rate"] = 1e-4
    with pytest.raises(RunError, match=r"training\.learning_rate: 0\.005 \(saved\) vs 0\.0001 \(now\)"):
        run(from_dict(config), resume=True)


@pytest.mark.slow
def test_single_and_continual_settings(tmp_path, caplog):
    with caplog.at_level("WARNING", logger="badit"):
        single = run(from_dict(tiny_run_config(tmp_path, "lora", "single", training={"max_steps": 2})))
    # the demo tasks' dev.json is their test.json (as SuperNI's release): dev carved from train, said once
    # for the run, not once per task adapter (2 tasks: 24 train examples each, 10% -> 2 dev, 22 train)
    carved = [r.getMessage() for r in caplog.records if r.getMessage().startswith("dev split carved")]
    assert (
        len(carved) == 1
        and "for 2 task(s) (shared with test: demo_copy_words, demo_reverse_words)" in carved[0]
    )
    folder = tmp_path / "run-lora-single"
    assert sorted(single["tasks"]) == ["demo_copy_words", "demo_reverse_words"]
    for task in single["tasks"]:
        task_metrics = json.loads((folder / "tasks" / task / "metrics.json").read_text())
        assert list(task_metrics["tasks"]) == [task]  # each adapter is evaluated on its own task only
        assert single["tasks"][task] == task_metrics["tasks"][task]
    assert len((folder / "predictions.jsonl").read_text().splitlines()) == 6

    order = ["demo_reverse_words", "demo_copy_words"]
    config = tiny_run_config(
        tmp_path, "badit", "continual", data={"task_order": order}, training={"max_steps": 2}
    )
    metrics = run(from_dict(config))
    folder = tmp_path / "run-badit-continual"
    assert sorted(p.name for p in (folder / "stages").iterdir()) == [
        "00-demo_reverse_words",
        "01-demo_copy_words",
        "base",
    ]
    matrix = metrics["continual"]["score_matrix"]["rougeL"]
    assert len(matrix) == 2 and all(len(row) == 2 for row in matrix)
    final = json.loads((folder / "stages" / "01-demo_copy_words" / "metrics.json").read_text())
    assert matrix[1] == [final["tasks"][t]["rougeL"] for t in order]
    base = metrics["continual"]["base_scores"]["rougeL"]
    assert metrics["continual"]["rougeL"] == continual_metrics(matrix, base)
    assert metrics["continual"]["order"] == order


def test_demo_tasks_conflict_on_shared_inputs(tmp_path):
    suite = generate_demo_tasks(train_per_task=20, test_per_task=5, seed=1)
    assert set(suite) == set(TASKS)

    def pairs(name, split):
        return [(i["input"], i["output"][0]) for i in suite[name][split]["Instances"]]

    copy, reverse = pairs("demo_copy_words", "test"), pairs("demo_reverse_words", "test")
    assert [i for i, _ in copy] == [i for i, _ in reverse]  # the same inputs ...
    assert all(o == i for i, o in copy) and all(
        o == " ".join(i.split()[::-1]) for i, o in reverse
    )  # opposite maps
    up, down = pairs("demo_sort_ascending", "train"), pairs("demo_sort_descending", "train")
    assert all(
        u.split() == sorted(i.split()) and d.split() == sorted(i.split())[::-1]
        for (i, u), (_, d) in zip(up, down)
    )
    assert all(int(o) == int(i) + 1 for i, o in pairs("demo_add_one", "train"))
    assert all(int(o) == int(i) - 1 for i, o in pairs("demo_subtract_one", "train"))
    train_inputs = {i for i, _ in pairs("demo_copy_words", "train")}
    assert not train_inputs & {i for i, _ in copy}  # no test input seen in training
    assert generate_demo_tasks(20, 5, seed=1) == suite and generate_demo_tasks(20, 5, seed=2) != suite

    write_demo_tasks(tmp_path, train_per_task=20, test_per_task=5, seed=1)
    loaded = load_tasks(tmp_path, "test")
    assert [t.name for t in loaded] == sorted(TASKS)
    assert [(i.input, i.outputs[0]) for i in loaded[1].instances] == copy
    with pytest.raises(ValueError, match="unknown demo task"):
        generate_demo_tasks(tasks=["demo_nope"])
