"""badit sweep: the sweep file's checks, lr selection on dev, aggregation over seeds, the paired
bootstrap, resuming, and (slow) a whole sweep on a tiny model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from badit.experiments.results import ResultsError, paired_bootstrap
from badit.experiments.sweep import (
    Progress,
    SweepError,
    choose_learning_rate,
    load_sweep,
    plan_final,
    plan_selection,
    run_jobs,
    run_sweep,
    summarize_sweep,
)


def write_sweep(tmp_path: Path, **fields) -> Path:
    (tmp_path / "base.yaml").write_text("name: base\n", encoding="utf-8")
    data = {
        "base": "base.yaml",
        "output_dir": str(tmp_path / "out"),
        "methods": ["badit", "lora"],
        "learning_rates": [1e-4, 3e-4],
        "seeds": [1, 2],
        **fields,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"methods": ["badit", "lorra"]}, "methods: 'lorra' is unknown"),
        ({"learning_rates": []}, "learning_rates must be a non-empty list"),
        ({"seeds": [1, "two"]}, "seeds: 'two' is not an integer"),
        ({"seeds": [1.5]}, "seeds: 1.5 is not an integer"),
        ({"interference": ["svd-moe"]}, "interference must list some of the sweep's methods"),
        ({"overrides": {"training.learning_rte": 1}}, "unknown field 'training.learning_rte'"),
    ],
)
def test_bad_sweep_files_fail_before_training(tmp_path, fields, message):
    with pytest.raises(SweepError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_sweep(write_sweep(tmp_path, **fields))
    assert not (tmp_path / "out").exists()


def test_cli_reports_a_bad_sweep_in_one_line(tmp_path, capsys):
    from badit.cli.main import main

    code = main(["sweep", str(write_sweep(tmp_path, methods=["badit", "qlora"]))])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0 and "'qlora' is unknown" in err and "sweep.yaml" in err
    assert not (tmp_path / "out").exists()


def test_plan_selects_on_dev_with_the_first_seed_then_runs_every_seed():
    sweep = load_sweep(write_sweep(Path(__import__("tempfile").mkdtemp()), interference=["lora"]))
    selection = plan_selection(sweep)
    assert [(j.method, j.learning_rate, j.seed) for j in selection] == [
        ("badit", 1e-4, 1),
        ("badit", 3e-4, 1),
        ("lora", 1e-4, 1),
        ("lora", 3e-4, 1),
    ]
    assert all(j.overrides == {"evaluation.split": "dev"} for j in selection)
    final = plan_final(sweep, {"badit": 3e-4, "lora": 1e-4})
    assert [(j.name, j.learning_rate, j.seed) for j in final] == [
        ("test/badit-seed1", 3e-4, 1),
        ("test/badit-seed2", 3e-4, 2),
        ("test/lora-seed1", 1e-4, 1),
        ("test/lora-seed2", 1e-4, 2),
        ("single/lora", 1e-4, 1),
    ]
    assert final[-1].overrides == {"setting": "single"}
    assert all("evaluation.split" not in j.overrides for j in final)  # default split: test


def test_choose_learning_rate_takes_the_best_dev_score_and_the_smaller_lr_on_ties():
    assert choose_learning_rate({1e-4: 30.0, 3e-4: 42.5, 1e-3: 41.0}) == 3e-4
    assert choose_learning_rate({1e-3: 42.5, 3e-4: 42.5, 1e-4: 10.0}) == 3e-4


def test_paired_bootstrap_numbers():
    # Constant differences: task a +2, task b +4 -> mean over tasks 3, and every resample gives 3.
    method = {("a", "1"): 12.0, ("a", "2"): 7.0, ("b", "1"): 9.0, ("b", "2"): 4.0}
    reference = {("a", "1"): 10.0, ("a", "2"): 5.0, ("b", "1"): 5.0, ("b", "2"): 0.0}
    result = paired_bootstrap(method, reference, samples=500)
    assert result["mean"] == pytest.approx(3.0)
    assert result["ci95"] == pytest.approx([3.0, 3.0])
    # One task, differences 0 and 10: a resample of 2 has mean 0 (p 1/4), 5 (p 1/2) or 10 (p 1/4),
    # so the 2.5th percentile is 0 and the 97.5th is 10; the point estimate is 5.
    result = paired_bootstrap({("a", "1"): 0.0, ("a", "2"): 10.0}, {("a", "1"): 0.0, ("a", "2"): 0.0}, 2000)
    assert result["mean"] == pytest.approx(5.0)
    assert result["ci95"] == pytest.approx([0.0, 10.0])
    with pytest.raises(ResultsError, match="same test examples"):  # the results model's (was the sweep's)
        paired_bootstrap({("a", "1"): 1.0}, {("a", "2"): 1.0}, 100)


def _fake_run(folder: Path, scores: dict[str, list[float]], method: str, setting: str = "multitask") -> None:
    """A finished run folder: per-example ROUGE-L ``scores`` per task -> predictions and metrics."""
    folder.mkdir(parents=True)
    records = [
        {"task": t, "id": f"{t}-{i}", "rougeL": s, "exact_match": 100.0 * (s == 100.0)}
        for t, values in scores.items()
        for i, s in enumerate(values)
    ]
    (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    tasks = {
        t: {"rougeL": sum(v) / len(v), "exact_match": 100.0 * v.count(100.0) / len(v), "num_examples": len(v)}
        for t, v in scores.items()
    }
    average = {m: sum(s[m] for s in tasks.values()) / len(tasks) for m in ("rougeL", "exact_match")}
    run = {"method": method, "setting": setting, "tokens_per_second": 100.0, "train_seconds": 10.0}
    run |= {"peak_memory_mb": 500.0, "adapter_bytes": 1000}
    (folder / "metrics.json").write_text(json.dumps({"tasks": tasks, "average": average, "run": run}))


def test_summary_means_stds_interference_and_difference(tmp_path):
    sweep = load_sweep(write_sweep(tmp_path, interference=["badit"]))
    out = sweep.output_dir
    # badit: seed 1 task x [40, 60] (50), task y [100, 0] (50) -> average 50; seed 2: x 70, y 30 -> 50
    _fake_run(out / "test/badit-seed1", {"x": [40.0, 60.0], "y": [100.0, 0.0]}, "badit")
    _fake_run(out / "test/badit-seed2", {"x": [60.0, 80.0], "y": [20.0, 40.0]}, "badit")
    # lora: seed 1 x 30, y 40 -> 35; seed 2 x 50, y 40 -> 45
    _fake_run(out / "test/lora-seed1", {"x": [30.0, 30.0], "y": [40.0, 40.0]}, "lora")
    _fake_run(out / "test/lora-seed2", {"x": [50.0, 50.0], "y": [40.0, 40.0]}, "lora")
    _fake_run(out / "single/badit", {"x": [44.0, 44.0], "y": [40.0, 40.0]}, "badit", "single")  # 42
    dev = {"badit": {1e-4: 20.0, 3e-4: 25.0}, "lora": {1e-4: 30.0, 3e-4: 10.0}}
    summary = summarize_sweep(sweep, {"badit": 3e-4, "lora": 1e-4}, dev)
    badit, lora = summary["results"]["badit"], summary["results"]["lora"]
    assert badit["tasks"]["x"] == {"mean": 60.0, "std": pytest.approx(math.sqrt(200)), "values": [50.0, 70.0]}
    assert badit["average"]["mean"] == 50.0 and badit["average"]["std"] == 0.0
    # lora average: 35 and 45 -> mean 40, sample std sqrt((25 + 25) / 1) = 7.07
    assert lora["average"]["mean"] == 40.0 and lora["average"]["std"] == pytest.approx(math.sqrt(50))
    # Interference: badit seed 1 average 50 minus single 42 = +8.
    assert badit["interference"]["score"] == pytest.approx(8.0)
    assert lora["interference"] is None
    # Per-example seed means: badit x [50, 70], y [60, 20]; lora x [40, 40], y [40, 40];
    # lora - badit: x [-10, -30] (mean -20), y [-20, +20] (mean 0) -> mean over tasks -10.
    assert lora["difference_vs_reference"]["mean"] == pytest.approx(-10.0)
    low, high = lora["difference_vs_reference"]["ci95"]
    # x's resampled mean lies in [-30, -10], y's in [-20, 20]; their average in [-25, 5].
    assert -25.0 <= low < -10.0 < high <= 5.0
    assert badit["difference_vs_reference"] is None
    assert summary["selection"]["lora"]["dev_rougeL"] == {"0.0001": 30.0, "0.0003": 10.0}
    assert badit["cost"] == {
        "tokens_per_second": 100.0,
        "train_seconds": 10.0,
        "peak_memory_mb": 500.0,
        "adapter_bytes": 1000,
    }


def test_finished_runs_are_skipped(tmp_path):
    sweep = load_sweep(write_sweep(tmp_path))
    jobs = plan_selection(sweep)
    trained = []

    def runner(sweep, job, gpu):
        trained.append(job.name)
        _fake_run(job.run_dir(sweep), {"x": [10.0]}, job.method)

    lines = []
    run_jobs(sweep, jobs[:2], Progress(4, 0, lambda *a, **k: lines.append(a[0])), runner)
    assert trained == ["select/badit-lr0.0001", "select/badit-lr0.0003"]
    trained.clear()
    run_jobs(sweep, jobs, Progress(4, 0, lambda *a, **k: lines.append(a[0])), runner)
    assert trained == ["select/lora-lr0.0001", "select/lora-lr0.0003"]
    assert lines[2].startswith("[1/4] select/badit-lr0.0001: skipped")
    assert lines[-1].startswith("[4/4] select/lora-lr0.0003")


@pytest.mark.slow
def test_sweep_on_a_tiny_model(tmp_path):
    # Real `badit train` runs, as few as show the protocol: one method, two learning rates scored on dev,
    # the chosen one trained on test (3 runs). The statistics over seeds and methods are worked by hand in
    # test_summary_means_stds_interference_and_difference.
    from tests.helpers import tiny_run_config

    config = tiny_run_config(tmp_path, data={"max_train_examples_per_task": 8})
    config["training"]["max_steps"] = 2
    config["evaluation"]["max_new_tokens"] = 4
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(config))
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(
        yaml.safe_dump(
            {
                "base": "base.yaml",
                "output_dir": str(tmp_path / "sweep"),
                "methods": ["badit"],
                "learning_rates": [1e-3, 5e-2],
                "seeds": [3],
                "bootstrap_samples": 200,
            }
        )
    )
    sweep = load_sweep(sweep_file)
    summary = run_sweep(sweep, echo=lambda *a, **k: None)
    out = tmp_path / "sweep"
    dev = {}
    for lr in ("0.001", "0.05"):
        run_dir = out / "select" / f"badit-lr{lr}"
        assert yaml.safe_load((run_dir / "config.yaml").read_text())["evaluation"]["split"] == "dev"
        dev[float(lr)] = json.loads((run_dir / "metrics.json").read_text())["average"]["rougeL"]
    chosen = max(dev, key=lambda lr: (dev[lr], -lr))
    assert summary["selection"]["badit"]["chosen_lr"] == chosen
    run_dir = out / "test" / "badit-seed3"
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert (saved["evaluation"]["split"], saved["seed"], saved["training"]["learning_rate"]) == (
        "test",
        3,
        chosen,
    )
    average = json.loads((run_dir / "metrics.json").read_text())["average"]["rougeL"]
    stats = summary["results"]["badit"]["average"]
    assert (stats["values"], stats["mean"], stats["std"]) == ([average], average, None)  # one seed: no std
    assert summary["results"]["badit"]["cost"]["tokens_per_second"] > 0
    assert json.loads((out / "sweep.json").read_text())["schema"] == "badit-sweep/1"
    assert (out / "sweep.md").is_file() and (out / "average.png").is_file()

    def must_not_train(sweep, job, gpu):
        raise AssertionError(f"{job.name} was trained again")

    again = run_sweep(sweep, echo=lambda *a, **k: None, runner=must_not_train)
    assert again["results"] == summary["results"]
