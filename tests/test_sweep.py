"""badit sweep: the sweep file's checks, lr selection on dev, aggregation over seeds, the seed-aware
interval, no run trained twice, the grid edge, selection data that is test data, resuming, and (slow)
a whole sweep on a tiny model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from scipy import stats

from badit.experiments.sweep import (
    Progress,
    SweepError,
    check_selection_data,
    choose_learning_rate,
    format_sweep,
    job_overrides,
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


def test_dry_run_lists_the_runs_and_which_are_finished(tmp_path, capsys):
    """`badit sweep --dry-run` trains nothing and says which runs a rerun would skip: 2 methods x 2 learning
    rates on dev (one finished), then 2 seeds each on test (seed 1: the winner's adapter, not retrained)."""
    from badit.cli.main import main

    sweep_file = write_sweep(tmp_path)
    _fake_run(load_sweep(sweep_file).output_dir / "select/lora-lr0.0001", {"x": [10.0]}, "lora")
    assert main(["sweep", str(sweep_file), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 + 4
    assert lines[0] == "select/badit-lr0.0001: method badit, lr 0.0001, seed 1 (trained)"
    assert lines[2] == "select/lora-lr0.0001: method lora, lr 0.0001, seed 1 (finished: skipped)"
    assert lines[4].startswith(
        "test/badit-seed1: method badit, lr <chosen lr>, seed 1 (the adapter of select/"
    )
    assert lines[5] == "test/badit-seed2: method badit, lr <chosen lr>, seed 2 (trained)"
    assert not (tmp_path / "out" / "select" / "badit-lr0.0001").exists()


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
    assert [(j.name, j.learning_rate, j.seed, j.evaluate) for j in final] == [
        ("test/badit-seed1", 3e-4, 1, "select/badit-lr0.0003"),  # the winning selection run, on test
        ("test/badit-seed2", 3e-4, 2, None),
        ("test/lora-seed1", 1e-4, 1, "select/lora-lr0.0001"),
        ("test/lora-seed2", 1e-4, 2, None),
        ("single/lora-seed1", 1e-4, 1, None),  # single-task runs over every seed
        ("single/lora-seed2", 1e-4, 2, None),
    ]
    assert final[-1].overrides == {"setting": "single", "training.single_task_steps": "share"}
    assert all("evaluation.split" not in j.overrides for j in final)  # default split: test
    # own data / raw SuperNI files: one split seed (the first) for every run of the sweep
    assert {job_overrides(sweep, j)["data.split_sizes"]["seed"] for j in selection + final} == {1}


def test_a_method_with_pcgrad_sits_beside_the_plain_method(tmp_path):
    sweep = load_sweep(write_sweep(tmp_path, methods=["lora", "lora+pcgrad"], interference=["lora+pcgrad"]))
    final = plan_final(sweep, {"lora": 1e-4, "lora+pcgrad": 3e-4})
    runs = {j.name: job_overrides(sweep, j) for j in plan_selection(sweep) + final}
    pcgrad = runs["test/lora+pcgrad-seed2"]
    assert pcgrad["method.name"] == "lora" and pcgrad["training.gradient_surgery"] == "pcgrad"
    assert "training.gradient_surgery" not in runs["test/lora-seed2"]  # the plain method: the config's own
    # its single-task reference (one task per adapter): the same lr, without surgery (refused in single)
    single = runs["single/lora+pcgrad-seed1"]
    assert single["setting"] == "single" and single["training.gradient_surgery"] == "none"
    assert single["training.learning_rate"] == 3e-4
    with pytest.raises(SweepError, match=r"methods: 'lora\+cagrad' is unknown.*NAME\+pcgrad"):
        load_sweep(write_sweep(tmp_path, methods=["lora", "lora+cagrad"]))


def test_no_run_is_trained_twice(tmp_path):
    """Every trained run differs from every other in method, learning rate, seed or setting; the first
    seed's test run is the winning selection run's adapter evaluated on test."""
    sweep = load_sweep(write_sweep(tmp_path, interference=["lora"]))
    trained, evaluated = [], []

    def runner(sweep, job, gpu):
        if job.evaluate:
            evaluated.append((job.name, job.evaluate))
        else:
            trained.append(
                (job.method, job.learning_rate, job.seed, job.overrides.get("setting", "multitask"))
            )
        _fake_run(job.run_dir(sweep), {"x": [10.0 * job.learning_rate / 1e-4, 0.0]}, job.method)

    run_sweep(sweep, echo=lambda *a, **k: None, runner=runner, check_data=False)
    assert len(trained) == len(set(trained)) == 4 + 2 + 2  # 4 selection, 2 test (seed 2), 2 single
    assert evaluated == [
        ("test/badit-seed1", "select/badit-lr0.0003"),
        ("test/lora-seed1", "select/lora-lr0.0003"),
    ]


def test_a_learning_rate_at_the_grid_edge_is_named_and_the_grid_extended_when_asked(tmp_path):
    lines = []

    def runner(sweep, job, gpu):  # dev score grows with the learning rate up to 9e-4, then falls
        score = {1e-4: 10.0, 3e-4: 20.0, 9e-4: 30.0}.get(round(job.learning_rate, 10), 5.0)
        _fake_run(job.run_dir(sweep), {"x": [score, score]}, job.method)

    summary = run_sweep(
        load_sweep(write_sweep(tmp_path)),
        echo=lambda *a, **k: lines.append(a[0] if a else ""),
        runner=runner,
        check_data=False,
    )
    warning = (
        "grid edge: badit chose 0.0003, the largest learning rate of its grid (0.0001, 0.0003): its best "
        "may lie above it; add 0.0009 to learning_rates, or set extend_grid: true in the sweep file"
    )
    assert warning in lines and warning in (tmp_path / "out" / "sweep.md").read_text()
    assert summary["selection"]["badit"]["at_edge"] == "upper"

    (tmp_path / "ext").mkdir()
    extended = write_sweep(tmp_path / "ext", extend_grid=True)
    lines.clear()
    summary = run_sweep(
        load_sweep(extended),
        echo=lambda *a, **k: lines.append(a[0] if a else ""),
        runner=runner,
        check_data=False,
    )
    sel = summary["selection"]["badit"]
    # one step beyond 3e-4 on a grid of ratio 3: 9e-4, which scores best (30) and is chosen; it is the
    # new edge, said again, and not extended further
    assert sel["extended_to"] == pytest.approx(9e-4) and sel["chosen_lr"] == pytest.approx(9e-4)
    assert sel["dev_rougeL"] == {"0.0001": 10.0, "0.0003": 20.0, "0.0009": 30.0}
    assert sel["at_edge"] == "upper" and any(x.startswith("grid edge: badit chose 0.0009") for x in lines)


def test_a_sweep_refuses_selection_examples_that_are_test_examples(tmp_path):
    from tests.test_dev_split import write_task

    root = tmp_path / "data"
    write_task(root, "t_same", train=40, dev="test")  # dev.json == test.json, as the SuperNI release
    write_task(root, "t_clean", train=40, dev="own")
    for dev_size, refused in ((0, True), (0.1, False)):
        (tmp_path / "base.yaml").write_text(
            yaml.safe_dump({"name": "b", "data": {"path": str(root), "dev_size": dev_size}}), encoding="utf-8"
        )
        data = {"base": "base.yaml", "output_dir": str(tmp_path / "out"), "methods": ["lora"]}
        data |= {"learning_rates": [1e-4], "seeds": [1]}
        (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
        sweep = load_sweep(tmp_path / "sweep.yaml")
        if refused:
            with pytest.raises(
                SweepError,
                match=r"selection would be on test: task t_same: 5 of its 5 selection \(dev\) examples are test examples",
            ):
                check_selection_data(sweep)
        else:
            check_selection_data(sweep)  # dev carved from train: nothing shared


def test_choose_learning_rate_takes_the_best_dev_score_and_the_smaller_lr_on_ties():
    assert choose_learning_rate({1e-4: 30.0, 3e-4: 42.5, 1e-3: 41.0}) == 3e-4
    assert choose_learning_rate({1e-3: 42.5, 3e-4: 42.5, 1e-4: 10.0}) == 3e-4


def _fake_run(
    folder: Path,
    scores: dict[str, list[float]],
    method: str,
    setting: str = "multitask",
    seed: int | None = None,
) -> None:
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
    if seed is None:  # test/<method>-seed<N>, single/<method>-seed<N>, select/... (seed 1)
        seed = int(folder.name.rsplit("seed", 1)[1]) if "seed" in folder.name else 1
    run = {
        "method": method,
        "setting": setting,
        "seed": seed,
        "tokens_per_second": 100.0,
        "train_seconds": 10.0,
    }
    run |= {"peak_memory_mb": 500.0, "adapter_bytes": 1000}
    (folder / "metrics.json").write_text(json.dumps({"tasks": tasks, "average": average, "run": run}))
    (folder / "summary.md").write_text("# scores\n")  # the last file of a finished run's results


def test_summary_means_stds_interference_and_difference(tmp_path):
    sweep = load_sweep(write_sweep(tmp_path, interference=["badit"]))
    out = sweep.output_dir
    # badit: seed 1 task x [40, 60] (50), task y [100, 0] (50) -> average 50; seed 2: x 70, y 30 -> 50
    _fake_run(out / "test/badit-seed1", {"x": [40.0, 60.0], "y": [100.0, 0.0]}, "badit")
    _fake_run(out / "test/badit-seed2", {"x": [60.0, 80.0], "y": [20.0, 40.0]}, "badit")
    # lora: seed 1 x 30, y 40 -> 35; seed 2 x 50, y 40 -> 45
    _fake_run(out / "test/lora-seed1", {"x": [30.0, 30.0], "y": [40.0, 40.0]}, "lora")
    _fake_run(out / "test/lora-seed2", {"x": [50.0, 50.0], "y": [40.0, 40.0]}, "lora")
    _fake_run(out / "single/badit-seed1", {"x": [44.0, 44.0], "y": [40.0, 40.0]}, "badit", "single")  # 42
    _fake_run(out / "single/badit-seed2", {"x": [46.0, 46.0], "y": [42.0, 42.0]}, "badit", "single")  # 44
    dev = {"badit": {1e-4: 20.0, 3e-4: 25.0}, "lora": {1e-4: 30.0, 3e-4: 10.0}}
    summary = summarize_sweep(sweep, {"badit": 3e-4, "lora": 1e-4}, dev)
    badit, lora = summary["results"]["badit"], summary["results"]["lora"]
    assert badit["tasks"]["x"] == {"mean": 60.0, "std": pytest.approx(math.sqrt(200)), "values": [50.0, 70.0]}
    assert badit["average"]["mean"] == 50.0 and badit["average"]["std"] == 0.0
    # lora average: 35 and 45 -> mean 40, sample std sqrt((25 + 25) / 1) = 7.07
    assert lora["average"]["mean"] == 40.0 and lora["average"]["std"] == pytest.approx(math.sqrt(50))
    # Interference, paired by seed and example: multi - single, seed 1 x [-4, 16], y [60, -40];
    # seed 2 x [14, 34], y [-22, -2]; seed means x [5, 25] (15), y [19, -21] (-1) -> 7 = 50 - mean(42, 44).
    # V_examples = (200/2 + 800/2) / 4 = 125; per seed 8 and 6 -> V_seeds = 2 / 2 = 1.
    score = badit["interference"]["score"]
    assert score["mean"] == pytest.approx(7.0) and score["std_error"] == pytest.approx(math.sqrt(126))
    assert (score["seeds"], score["examples"]) == (2, 4)
    assert badit["interference"]["single_average"]["values"] == [42.0, 44.0]
    assert badit["interference"]["budget"]["seeds"] == [1, 2]
    assert lora["interference"] is None
    # lora - badit, seed 1: x [-10, -30], y [-60, 40]; seed 2: x [-10, -30], y [20, 0]; seed means
    # x [-10, -30] (mean -20), y [-20, 20] (mean 0) -> -10. V_examples = (200/2 + 800/2) / 4 = 125;
    # per seed -15 and -5 -> V_seeds = 50 / 2 = 25; df = 150^2 / (125^2 / 2 + 25^2 / 1) = 8/3.
    difference = lora["difference_vs_reference"]
    half = stats.t.ppf(0.975, 8 / 3) * math.sqrt(150)
    assert difference["mean"] == pytest.approx(-10.0)
    assert difference["ci95"] == pytest.approx([-10.0 - half, -10.0 + half])
    assert badit["difference_vs_reference"] is None
    # smallest resolvable difference: nc * SE / c4, nc = 4.5488 (noncentral t, df 8/3), c4(8/3) = 0.91226:
    # 4.5488 * 12.247 / 0.91226 = 61.07; interference: df = 126^2 / (125^2 / 2 + 1^2 / 1) = 2.032,
    # nc 5.5728, c4 0.88781: 5.5728 * sqrt(126) / 0.88781 = 70.46
    assert difference["resolvable"] == pytest.approx(61.069, abs=1e-3)
    assert score["resolvable"] == pytest.approx(70.459, abs=1e-3)
    table = format_sweep(summary)
    assert f"| {-10:+.2f} [{-10 - half:+.2f}, {-10 + half:+.2f}] (n = 4 examples x 2 seeds) |" in table
    assert (
        "| badit difference resolvable (80% power) | (reference) | ≥ 61.07 (n = 4 examples x 2 seeds) |"
        in table
    )
    assert "| interference resolvable (80% power) | ≥ 70.46 (n = 4 examples x 2 seeds) | - |" in table
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


def test_a_finished_run_of_another_learning_rate_is_refused_not_reused(tmp_path):
    # select/badit-lr0.0003 already holds a finished run whose config.yaml says lr 1e-4 (a sweep rerun
    # into an old folder after its grid changed): skipping it would report the 1e-4 run as 3e-4.
    sweep = load_sweep(write_sweep(tmp_path))
    jobs = plan_selection(sweep)  # badit 1e-4, badit 3e-4, lora 1e-4, lora 3e-4
    trained = []

    def runner(sweep, job, gpu):
        trained.append(job.name)
        _fake_run(job.run_dir(sweep), {"x": [10.0]}, job.method)

    def finished(job, lr, method="badit", seed=1):
        folder = job.run_dir(sweep)
        _fake_run(folder, {"x": [10.0]}, method)
        config = {"method": {"name": method}, "training": {"learning_rate": lr}, "seed": seed}
        (folder / "config.yaml").write_text(yaml.safe_dump(config))
        (folder / "summary.md").write_text("done\n")

    finished(jobs[0], 1e-4)  # the same lr: skipped, as before
    finished(jobs[1], 1e-4)  # asked 3e-4
    with pytest.raises(
        SweepError,
        match=r"badit-lr0.0003: a finished run with training.learning_rate 0.0001, the sweep asks 0.0003",
    ):
        run_jobs(sweep, jobs, Progress(4, 0, lambda *a, **k: None), runner)
    assert trained == []  # refused before anything trained
    assert (jobs[1].run_dir(sweep) / "metrics.json").is_file()  # and nothing of the old run deleted
    (jobs[1].run_dir(sweep) / "config.yaml").write_text(
        yaml.safe_dump({"method": {"name": "badit"}, "training": {"learning_rate": 3e-4}, "seed": 2})
    )
    with pytest.raises(SweepError, match=r"seed 2, the sweep asks 1"):
        run_jobs(sweep, jobs, Progress(4, 0, lambda *a, **k: None), runner)
    finished_again = jobs[1].run_dir(sweep) / "config.yaml"
    finished_again.write_text(
        yaml.safe_dump({"method": {"name": "badit"}, "training": {"learning_rate": 3e-4}, "seed": 1})
    )
    run_jobs(sweep, jobs, Progress(4, 0, lambda *a, **k: None), runner)
    assert trained == ["select/lora-lr0.0001", "select/lora-lr0.0003"]


@pytest.mark.slow
def test_sweep_on_a_tiny_model(tmp_path):
    # Real `badit train` runs, as few as show the protocol: one method, two learning rates scored on dev,
    # the chosen one's adapter evaluated on test (2 trainings, 1 evaluation: no run trained twice). The statistics over seeds and methods are worked by hand in
    # test_summary_means_stds_interference_and_difference.
    from tests.helpers import tiny_run_config, write_sweep

    config = tiny_run_config(tmp_path, data={"max_train_examples_per_task": 8})
    config["training"]["max_steps"] = 2
    config["evaluation"]["max_new_tokens"] = 4
    sweep_file = write_sweep(tmp_path, config, methods=["badit"], learning_rates=[1e-3, 5e-2], seeds=[3])
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
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["run"]["trained_in"] == str(out / "select" / f"badit-lr{chosen:g}")
    assert metrics["run"]["train_seconds"] > 0  # the training record of the selection run
    average = metrics["average"]["rougeL"]
    stats = summary["results"]["badit"]["average"]
    assert (stats["values"], stats["mean"], stats["std"]) == ([average], average, None)  # one seed: no std
    assert summary["results"]["badit"]["cost"]["tokens_per_second"] > 0
    assert json.loads((out / "sweep.json").read_text())["schema"] == "badit-sweep/1"
    assert (out / "sweep.md").is_file() and (out / "average.png").is_file()

    def must_not_train(sweep, job, gpu):
        raise AssertionError(f"{job.name} was trained again")

    again = run_sweep(sweep, echo=lambda *a, **k: None, runner=must_not_train)
    assert again["results"] == summary["results"]


def test_single_task_runs_make_the_passes_of_the_multi_task_run():
    """training.single_task_steps: share -> task t gets max_steps * n_t / N steps: 30 steps over tasks
    of 40 and 20 examples -> 20 and 10 (each adapter sees its data as often as the joint run does)."""
    from types import SimpleNamespace

    from badit.experiments.config import from_dict
    from badit.experiments.settings import single_task_steps

    tasks = [SimpleNamespace(name="a", instances=[0] * 40), SimpleNamespace(name="b", instances=[0] * 20)]
    share = from_dict({"setting": "single", "training": {"max_steps": 30, "single_task_steps": "share"}})
    assert single_task_steps(share, tasks) == {"a": 20, "b": 10}
    each = from_dict({"setting": "single", "training": {"max_steps": 30}})
    assert single_task_steps(each, tasks) == {"a": 30, "b": 30}
    epochs = from_dict(
        {"setting": "single", "training": {"num_train_epochs": 2, "single_task_steps": "share"}}
    )
    assert single_task_steps(epochs, tasks) == {"a": -1, "b": -1}  # epoch-based: the same passes already
