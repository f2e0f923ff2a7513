"""Several processes: `badit train` under torchrun (2 gloo processes on CPU) ends with the same adapter
on every rank, equal within float tolerance to one process with the same global batch; the ranks'
replica check and non-finite verdict are collective."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from safetensors.torch import load_file

from badit.experiments.config import from_dict
from badit.experiments.settings import run
from badit.training.nonfinite import NonFiniteError, NonFiniteGuard
from badit.training.replicas import ReplicaMismatchError, check_replicas
from tests.helpers import tiny_run_config

ROOT = Path(__file__).resolve().parents[1]


def _replica_worker(rank: int, init_file: str, results: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        layer = torch.nn.Linear(3, 2)
        outcomes = [check_replicas(layer, "stage")]  # the same seed on both ranks: 0.0
        if rank == 1:
            with torch.no_grad():
                layer.weight[0, 1] += 0.25
        try:
            outcomes.append(check_replicas(layer, "stage"))
        except ReplicaMismatchError as error:
            outcomes.append(str(error))
        # the non-finite guard: a NaN loss on rank 1 only (gradients finite) stops both ranks at step 4
        for p in layer.parameters():
            p.grad = torch.ones_like(p)
        guard = NonFiniteGuard("stop")
        loss = torch.tensor(float("nan") if rank == 1 else 1.0)
        try:
            guard.check(layer, loss, step=4, sync_step=True)
            outcomes.append(None)
        except NonFiniteError as error:
            outcomes.append(error.step)
        Path(results, f"rank{rank}.json").write_text(json.dumps(outcomes))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_replica_check_and_nonfinite_verdict_agree_across_ranks(tmp_path):
    mp.spawn(_replica_worker, args=(str(tmp_path / "rdv"), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        equal, diverged, stopped_at = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert equal == 0.0
        # both ranks stop: rank 0 holds the right values but learns of rank 1's 0.25 through the gather
        assert diverged.startswith("stage: the 2 processes ended training with different adapters")
        assert "largest difference from rank 0: 0.25" in diverged, diverged
        assert stopped_at == 4  # rank 0's own loss was finite: it learns of rank 1's NaN by the all-reduce


def _torchrun_train(config_file: Path, timeout: int) -> subprocess.CompletedProcess:
    """`badit train CONFIG` launched by torchrun as 2 gloo processes of one thread each."""
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    return subprocess.run(
        [*launch, "-m", "badit.cli.main", "train", str(config_file)],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    # Global batch 4: 2 processes x 2 (torchrun) vs 1 x 4. Trainer's sampler order is seeded and
    # accelerate hands consecutive per-device batches to the ranks, so each step sees the same 4
    # examples; lora_dropout is 0 (tiny_run_config). Regroups at steps 2 and 4 (every 2 until 0.7 of 6),
    # from gradient windows summed over both ranks.
    config = tiny_run_config(
        tmp_path,
        "badit",
        training={"max_steps": 6, "per_device_train_batch_size": 2},
        method={"regroup_every": 2, "regroup_until": 0.7},
        evaluation={"max_examples_per_task": 1, "max_new_tokens": 2},
    )
    two, one = tmp_path / "two", tmp_path / "one"
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({**config, "output_dir": str(two)}))
    done = _torchrun_train(path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("run folder:") == 1  # only rank 0 evaluates and reports
    metrics = json.loads((two / "metrics.json").read_text())
    # every rank held rank 0's adapter at the end (check_replicas in train_stage, else no adapter)
    assert metrics["run"]["processes"] == 2

    single = {**config, "output_dir": str(one)}
    single["training"] = {**config["training"], "per_device_train_batch_size": 4}
    assert run(from_dict(single))["run"]["processes"] == 1

    # Tolerance: float32 sums in another order (each rank's batch padded to its own length, gloo
    # adding the two ranks' gradients) differ by a few ulps per step; measured 7.8e-8 after 6 AdamW
    # steps on entries up to 0.13 (ulp 1.5e-8). 1e-6 is ~13x that, while a different global batch
    # (1 process x 2, measured) ends 0.19 away.
    expected, distributed = _adapter(one), _adapter(two)
    assert expected.keys() == distributed.keys() and any("badit_router" in k for k in expected)
    for key in expected:
        torch.testing.assert_close(distributed[key], expected[key], rtol=0, atol=1e-6, msg=key)
    regroups = [_jsonl(folder / "logs" / "regroup.jsonl") for folder in (one, two)]
    assert [r["step"] for r in regroups[0]] == [r["step"] for r in regroups[1]] == [2, 4]
    for record_one, record_two in zip(*regroups, strict=True):
        for layer, stats in record_one["layers"].items():
            assert record_two["layers"][layer]["moved"] == stats["moved"], layer
    assert sum(stats["moved"] for stats in regroups[0][0]["layers"].values()) > 0  # a regroup that moves
    losses = [
        [r["loss"] for r in _jsonl(folder / "logs" / "train_log.jsonl") if "loss" in r]
        for folder in (one, two)
    ]
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)


@pytest.mark.slow
def test_torchrun_continual_runs_its_stages_in_order_on_two_processes(tmp_path):
    # issue 31: rank 1 loaded stage 1's adapter before rank 0 had written it (no wait between stages)
    config = tiny_run_config(
        tmp_path,
        "lora",
        "continual",
        training={"max_steps": 2, "per_device_train_batch_size": 2},
        evaluation={"max_examples_per_task": 1, "max_new_tokens": 2, "continual_base_scores": False},
    )
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    done = _torchrun_train(path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((Path(config["output_dir"]) / "metrics.json").read_text())
    assert metrics["continual"]["order"] == ["demo_copy_words", "demo_reverse_words"]
    assert len(metrics["continual"]["score_matrix"]["rougeL"]) == 2  # both stages trained and scored
    stages = sorted((Path(config["output_dir"]) / "stages").iterdir())
    assert [s.name for s in stages] == ["00-demo_copy_words", "01-demo_reverse_words"]
    assert all((s / "done.json").is_file() for s in stages)
