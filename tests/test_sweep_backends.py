"""Issue 31: `badit sweep --backend submitit` (the sweep file's `launcher:`): the runs go through submitit,
on Slurm where `srun` exists and submitit's local executor here, with the same run folders, selection
and results as the local backend; bad launcher sections fail before anything trains."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from badit.experiments.sweep import SweepError, load_sweep, run_sweep
from tests.helpers import tiny_run_config, write_sweep


@pytest.mark.parametrize(
    "launcher, message",
    [
        ({"backend": "kubernetes"}, "launcher.backend 'kubernetes' is unknown; use one of local, submitit"),
        ({"backend": "submitit", "max_parallel": 0}, "launcher.max_parallel must be a positive integer"),
        ({"backend": "submitit", "nodes": 2}, "launcher: unknown field 'nodes'"),
        ({"slurm": "gpu"}, "launcher.slurm must be a mapping"),
    ],
)
def test_a_bad_launcher_fails_before_training(tmp_path, launcher, message):
    sweep_file = write_sweep(tmp_path, tiny_run_config(tmp_path), launcher=launcher)
    with pytest.raises(SweepError, match=message):
        load_sweep(sweep_file)


@pytest.mark.slow
def test_a_sweep_through_submitit_trains_selects_and_scores_like_the_local_backend(tmp_path):
    pytest.importorskip("submitit")
    config = tiny_run_config(tmp_path, data={"max_train_examples_per_task": 8})
    config["training"]["max_steps"] = 2
    config["evaluation"]["max_new_tokens"] = 4
    sweep_file = write_sweep(tmp_path, config, methods=["lora"], learning_rates=[1e-3], seeds=[3])
    # a real `badit sweep` process, as a user starts it (submitit's executor forks workers of its own)
    done = subprocess.run(
        [sys.executable, "-m", "badit.cli.main", "sweep", str(sweep_file), "--backend", "submitit"],
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "(submitit, local executor)" in done.stdout
    out = tmp_path / "sweep"
    summary = json.loads((out / "sweep.json").read_text())
    # one selection run trained as a submitit job, its adapter scored on test as a second one
    assert summary["selection"]["lora"]["chosen_lr"] == 1e-3
    test_run = out / "test" / "lora-seed3"
    metrics = json.loads((test_run / "metrics.json").read_text())
    assert metrics["run"]["trained_in"] == str(out / "select" / "lora-lr0.001")
    jobs = sorted(p.name for p in (out / "submitit").glob("*_log.out"))
    assert len(jobs) == 2, jobs  # each run's output is its submitit job's log
    # nothing is trained twice, whichever backend reruns it
    sweep = load_sweep(sweep_file)

    def must_not_train(sweep, job, gpu):
        raise AssertionError(f"{job.name} was trained again")

    assert run_sweep(sweep, echo=lambda *a, **k: None, runner=must_not_train)["results"] == summary["results"]


def test_a_task_scored_on_fewer_than_2_examples_is_refused_before_any_run(tmp_path):
    # issue 31 item 2: "every task needs at least 2 test examples for an interval" known before training
    config = tiny_run_config(tmp_path, evaluation={"max_examples_per_task": 1})
    sweep = load_sweep(write_sweep(tmp_path, config))

    def must_not_train(sweep, job, gpu):
        raise AssertionError(f"{job.name} trained")

    with pytest.raises(
        SweepError, match=r"task demo_copy_words: 1 dev example\(s\).*at least 2 examples per task"
    ):
        run_sweep(sweep, echo=lambda *a, **k: None, runner=must_not_train)


def test_gpus_per_run_groups_the_visible_gpus():
    from badit.experiments.sweep import run_gpus

    assert run_gpus(["0", "1", "2", "3", "4"], 2) == ["0,1", "2,3"]  # GPU 4 left over: unused
    assert run_gpus(["0", "1"], 1) == ["0", "1"] and run_gpus([], 4) == []
    with pytest.raises(SweepError, match="gpus_per_run 4: only 2 GPUs are visible"):
        run_gpus(["0", "1"], 4)


@pytest.mark.slow
def test_gpus_per_run_launches_each_run_data_parallel(tmp_path):
    # on this CPU machine: 2 gloo processes per run (torch.distributed.run), as 2 GPUs per run would be
    config = tiny_run_config(tmp_path, data={"max_train_examples_per_task": 8})
    config["training"].update(max_steps=2, per_device_train_batch_size=2)
    config["evaluation"]["max_new_tokens"] = 2
    sweep_file = write_sweep(tmp_path, config, learning_rates=[1e-3], launcher={"gpus_per_run": 2})
    run_sweep(load_sweep(sweep_file), echo=lambda *a, **k: None)
    metrics = json.loads((tmp_path / "sweep" / "select" / "lora-lr0.001" / "metrics.json").read_text())
    assert metrics["run"]["processes"] == 2
