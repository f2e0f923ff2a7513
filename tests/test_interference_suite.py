"""The generated interference suite: conflicting codes on shared inputs, a helping pair, disjoint
splits, `data.path: generated:interference`, and the shipped configs that use it."""

from __future__ import annotations

from pathlib import Path

import pytest

from badit.data import DataError, open_source
from badit.data.synthetic import INTERFERENCE_VOCABULARY, interference_codes, interference_tasks
from badit.experiments.config import load_config
from badit.experiments.sweep import job_config, load_sweep, plan_selection

ROOT = Path(__file__).resolve().parents[1]


def test_codes_conflict_on_every_word_over_the_same_numbers():
    codes = interference_codes(seed=0)
    amber, birch = codes["amber"], codes["birch"]
    assert set(amber) == set(birch) == set(INTERFERENCE_VOCABULARY) and len(amber) == 16
    assert len(set(amber.values())) == 16  # a code: distinct numbers
    assert set(amber.values()) == set(birch.values())  # the same output vocabulary ...
    assert all(amber[w] != birch[w] for w in amber)  # ... but every word maps elsewhere
    assert all(10 <= int(n) <= 99 for n in amber.values())
    assert interference_codes(seed=0) == codes and interference_codes(seed=1) != codes


def test_answers_follow_the_definitions():
    tasks = interference_tasks(seed=0)
    amber = interference_codes(seed=0)["amber"]
    words = "apple cat bird"
    expected_in_order = f"{amber['apple']} {amber['cat']} {amber['bird']}"
    assert tasks["code_amber"][1](words) == expected_in_order
    assert tasks["code_amber_reversed"][1](words) == f"{amber['bird']} {amber['cat']} {amber['apple']}"
    assert tasks["sort_ascending"][1](words) == "apple bird cat"
    assert tasks["sort_descending"][1](words) == "cat bird apple"
    assert tasks["copy_words"][1](words) == "apple cat bird"
    assert tasks["reverse_words"][1](words) == "bird cat apple"
    definitions = [definition for definition, _ in tasks.values()]
    assert len(set(definitions)) == 8  # every task is told apart by its prompt


def test_source_shares_inputs_across_tasks_and_keeps_splits_disjoint():
    source = open_source("generated:interference", sizes={"seed": 7, "test": 5, "dev": 3, "train": 10})
    assert source.task_names() == [
        "code_amber",
        "code_amber_reversed",
        "code_birch",
        "code_birch_reversed",
        "copy_words",
        "reverse_words",
        "sort_ascending",
        "sort_descending",
    ]
    inputs = {}
    for split, count in (("train", 10), ("dev", 3), ("test", 5)):
        tasks = source.load(split)
        assert [len(t.instances) for t in tasks] == [count] * 8
        per_task = {tuple(i.input for i in t.instances) for t in tasks}
        assert len(per_task) == 1  # the eight tasks read the same inputs
        inputs[split] = set(per_task.pop())
        amber, birch = (t for t in tasks if t.name in ("code_amber", "code_birch"))
        assert all(a.outputs != b.outputs for a, b in zip(amber.instances, birch.instances))
    assert not inputs["train"] & inputs["test"] and not inputs["train"] & inputs["dev"]
    assert not inputs["dev"] & inputs["test"]
    # the run seed (7 here) does not change the data: seeds vary training only
    again = open_source("generated:interference", sizes={"seed": 8, "test": 5, "dev": 3, "train": 10})
    assert [i.input for i in again.load("test")[0].instances] == [
        i.input for i in source.load("test")[0].instances
    ]
    default = open_source("generated:interference")
    assert [len(t.instances) for t in default.load("test", ["code_birch"])] == [100]


def test_unknown_suite_task_or_empty_split_is_one_clear_error():
    with pytest.raises(DataError, match="no such generated suite; use one of generated:interference"):
        open_source("generated:nope")
    source = open_source("generated:interference", sizes={"dev": 0})
    with pytest.raises(DataError, match="has no task\\(s\\) copy; its tasks: code_amber"):
        source.load("train", ["copy"])
    with pytest.raises(DataError, match="the dev split is empty"):
        source.load("dev")


def test_shipped_configs_read():
    config = load_config(ROOT / "configs" / "interference.yaml")
    assert config.data.path == "generated:interference" and config.training.num_train_epochs == 3
    assert config.data.tasks == ["copy_words", "reverse_words", "sort_ascending", "sort_descending"]
    for name in ("interference_cpu.yaml", "interference_cpu_published.yaml"):
        sweep = load_sweep(ROOT / "configs" / "sweeps" / name)
        assert len(sweep.learning_rates) == 3 and len(sweep.seeds) == 5
        assert set(sweep.interference) == set(sweep.methods)
        configs = [job_config(sweep, job) for job in plan_selection(sweep)]
        assert {c.data.path for c in configs} == {"generated:interference"}
    assert configs[0].method.train_router is False  # the published variant


def test_superni_cpu_evidence_sweep_reads():
    sweep = load_sweep(ROOT / "configs" / "sweeps" / "superni_cpu_evidence.yaml")
    assert sweep.methods == ["badit", "svd-moe", "pissa", "lora"] and sweep.seeds == [1, 2, 3]
    config = job_config(sweep, plan_selection(sweep)[0])
    assert len(config.data.tasks) == 4 and config.evaluation.max_examples_per_task is None
