"""Dev is never test: a dev split that is missing or shares examples with test is carved from train
with a fixed seed (badit.data.sources.CarvedDevSource), and `badit data check` reports dev == test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from badit.data import check_data, open_source
from badit.data.sources import DEV_CAP, CarvedDevSource, dev_count, shared_examples
from badit.experiments.config import ConfigError, from_dict
from badit.experiments.stage import data_source, load_run_tasks


def task_json(instances: list[tuple[str, str, str]]) -> dict:
    return {
        "Definition": ["Answer."],
        "Positive Examples": [],
        "Instances": [{"id": i, "input": x, "output": [y]} for i, x, y in instances],
    }


def write_task(root: Path, name: str, train: int, dev: str | None, test: int = 5) -> None:
    """A SuperNI folder task: ``train`` train instances, ``test`` test ones; dev.json is the test file
    (``"test"``, as the SuperNI continual release), a copy with new ids (``"renamed"``), distinct
    instances (``"own"``) or absent (None)."""
    folder = root / name
    folder.mkdir(parents=True)
    rows = {
        "train": [(f"{name}-tr{i}", f"train input {i}", f"a{i}") for i in range(train)],
        "test": [(f"{name}-te{i}", f"test input {i}", f"b{i}") for i in range(test)],
    }
    if dev == "test":
        rows["dev"] = rows["test"]
    elif dev == "renamed":
        rows["dev"] = [(f"{name}-dv{i}", x, y) for i, (_, x, y) in enumerate(rows["test"])]
    elif dev == "own":
        rows["dev"] = [(f"{name}-dv{i}", f"dev input {i}", f"c{i}") for i in range(test)]
    for split, instances in rows.items():
        (folder / f"{split}.json").write_text(json.dumps(task_json(instances)), encoding="utf-8")


@pytest.fixture
def superni(tmp_path) -> Path:
    root = tmp_path / "superni"
    write_task(root, "t_same", train=40, dev="test")  # dev.json == test.json
    write_task(root, "t_renamed", train=1200, dev="renamed")  # same inputs and answers, other ids
    write_task(root, "t_missing", train=20, dev=None)
    write_task(root, "t_clean", train=30, dev="own")
    return root


def test_dev_that_is_test_or_missing_is_carved_from_train(superni):
    raw = open_source(superni)
    source = CarvedDevSource(raw)
    for name, n_train, n_dev in (("t_same", 40, 4), ("t_renamed", 1200, DEV_CAP), ("t_missing", 20, 2)):
        (train,), (dev,), (test,) = (source.load(s, [name]) for s in ("train", "dev", "test"))
        # 10% of the train examples: 40 -> 4, 1200 -> 120 capped at 100, 20 -> 2; train keeps the rest
        assert (len(train.instances), len(dev.instances)) == (n_train - n_dev, n_dev)
        (original,) = raw.load("train", [name])
        assert sorted(x.id for x in train.instances + dev.instances) == sorted(
            x.id for x in original.instances
        )
        assert shared_examples(dev, test) == 0 and shared_examples(dev, train) == 0
    (clean_dev,) = source.load("dev", ["t_clean"])
    assert [x.id for x in clean_dev.instances] == [f"t_clean-dv{i}" for i in range(5)]  # kept as it is
    assert source.carved == {
        "t_same": "shares 5 of 5 examples with test",
        "t_renamed": "shares 5 of 5 examples with test",  # by input and answers: ids differ
        "t_missing": "missing",
    }
    line = source.describe_carving()
    assert line == (
        "dev split carved from train for 3 task(s) (missing: t_missing; shared with test: t_renamed, t_same): "
        "10% (at most 100) of each task's train examples with seed 0 (independent of the run seed), "
        "training uses the rest (data.dev_size sets the size)"
    )


def test_carved_dev_does_not_depend_on_the_run_seed(superni):
    def dev_ids(seed: int) -> list[str]:
        config = from_dict({"seed": seed, "data": {"path": str(superni)}, "evaluation": {"split": "dev"}})
        source = data_source(config)
        train, dev = load_run_tasks(config, ["t_same"], source)
        assert not {x.id for x in train[0].instances} & {x.id for x in dev[0].instances}
        return [x.id for x in dev[0].instances]

    assert dev_ids(1) == dev_ids(2) == dev_ids(3)
    assert dev_count(0.1, 40) == 4 and dev_count(0.1, 5000) == DEV_CAP and dev_count(7, 40) == 7
    no_carving = from_dict({"data": {"path": str(superni), "dev_size": 0}})
    assert not isinstance(data_source(no_carving), CarvedDevSource)
    with pytest.raises(ConfigError, match=r"data.dev_size must be a fraction in \(0, 1\), a count, or 0"):
        from_dict({"data": {"path": str(superni), "dev_size": -1}})


def test_too_few_train_examples_to_carve_names_the_task_and_fix(tmp_path):
    write_task(tmp_path / "d", "tiny", train=3, dev=None)
    with pytest.raises(Exception, match=r"task 'tiny' has 3 train examples, too few to carve 3 dev examples"):
        CarvedDevSource(open_source(tmp_path / "d"), dev_size=3).load("dev", ["tiny"])


def test_own_data_without_dev_rows_gets_a_carved_dev_split_avoiding_duplicates(tmp_path):
    rows = [{"task": "sum", "prompt": f"{i}+1=", "completion": str(i + 1)} for i in range(50)]
    rows += [{"task": "sum", "prompt": "0+1=", "completion": "1"}] * 10  # duplicates of one row
    path = tmp_path / "mix.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    source = CarvedDevSource(open_source(path, sizes={"seed": 5}))
    (dev,), (test,) = source.load("dev", ["sum"]), source.load("test", ["sum"])
    assert source.carved == {"sum": "missing"} and len(dev.instances) == 5  # 10% of 60 - 6 test = 54 -> 5
    assert shared_examples(dev, test) == 0  # drawn among the train rows that are not also test rows


def test_data_check_reports_dev_equal_to_test(superni):
    report, ok = check_data(superni)
    assert ok  # usable: runs carve dev from train
    line = next(x for x in report.splitlines() if x.startswith("note: dev == test"))
    assert "in 2 of 4 tasks: t_renamed (5 of 5), t_same (5 of 5);" in line
    assert "runs carve dev from train instead (data.dev_size: 10%, at most 100 per task, seed 0)" in line


@pytest.mark.skipif(not Path("/work/shared/data/superni").is_dir(), reason="the shared SuperNI data")
def test_data_check_on_the_superni_continual_release():
    report, _ = check_data("/work/shared/data/superni")
    assert (
        "note: dev == test: the dev examples are test examples (same id, or same input and answers) in 10 of 10 tasks"
        in report
    )
