"""The non-finite guard: a NaN/inf loss or gradient stops training naming the step (no adapter
written, exit != 0 through the CLI), or, with training.on_nonfinite=skip, drops exactly that step."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from transformers import Trainer, TrainerCallback

from badit.cli.main import main
from badit.experiments.config import ConfigError, from_dict
from badit.experiments.settings import run
from badit.training.nonfinite import MAX_CONSECUTIVE_SKIPS, NonFiniteError, NonFiniteGuard
from tests.helpers import tiny_run_config

NAN = float("nan")


def _layer_with_grad(grad_value: float) -> torch.nn.Linear:
    layer = torch.nn.Linear(2, 2)
    for p in layer.parameters():
        p.grad = torch.full_like(p, 1.0)
    layer.weight.grad[1, 0] = grad_value
    return layer


# ----------------------------------------------------------------------------------------------
# The guard alone


def test_stop_names_the_step_of_a_nonfinite_gradient():
    guard = NonFiniteGuard("stop", where="runs/x")
    guard.check(_layer_with_grad(0.5), torch.tensor(1.0), step=6, sync_step=True)  # finite: nothing
    with pytest.raises(NonFiniteError, match=r"runs/x: non-finite loss or gradient at step 7") as error:
        guard.check(_layer_with_grad(float("inf")), torch.tensor(1.0), step=7, sync_step=True)
    assert error.value.step == 7


def test_a_nonfinite_micro_batch_loss_counts_at_its_optimizer_step():
    guard = NonFiniteGuard("stop")
    layer = _layer_with_grad(0.5)
    # gradient accumulation over 3 micro-batches: the first loss is NaN, the step is judged at the third
    guard.check(layer, torch.tensor(NAN), step=2, sync_step=False)
    guard.check(layer, torch.tensor(1.0), step=2, sync_step=False)
    with pytest.raises(NonFiniteError, match="at step 2"):
        guard.check(layer, torch.tensor(1.0), step=2, sync_step=True)
    # the verdict was reset: the next step with finite losses and gradients passes
    guard.check(layer, torch.tensor(1.0), step=3, sync_step=True)


def test_skip_leaves_parameters_and_adamw_state_unchanged():
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=0.1, weight_decay=0.1)
    layer(torch.randn(4, 3)).sum().backward()
    optimizer.step()  # a finite step first, so that there is optimizer state to keep
    optimizer.zero_grad()
    weights = {k: v.clone() for k, v in layer.state_dict().items()}
    state = {k: v.clone() for k, v in optimizer.state[layer.weight].items()}
    guard = NonFiniteGuard("skip")
    (layer(torch.randn(4, 3)).sum() * NAN).backward()
    guard.check(layer, torch.tensor(NAN), step=2, sync_step=True)
    optimizer.step()  # what the Trainer does next
    assert all(p.grad is None for p in layer.parameters())
    for key, value in layer.state_dict().items():
        assert torch.equal(value, weights[key]), key
    for key, value in optimizer.state[layer.weight].items():
        assert torch.equal(value, state[key]), key  # step count 1, exp_avg, exp_avg_sq as they were
    assert guard.skipped_steps == [2]


def test_skip_stops_after_too_many_consecutive_bad_steps():
    logged = []
    guard = NonFiniteGuard("skip", where="stage", log_fn=logged.append)
    # steps 1-9 bad, step 10 finite (resets the count), steps 11-20 bad: the 10th in a row (20) stops
    for step in range(1, 10):
        guard.check(_layer_with_grad(NAN), torch.tensor(1.0), step=step, sync_step=True)
    guard.check(_layer_with_grad(0.5), torch.tensor(1.0), step=10, sync_step=True)
    for step in range(11, 20):
        guard.check(_layer_with_grad(NAN), torch.tensor(1.0), step=step, sync_step=True)
    with pytest.raises(
        NonFiniteError, match=f"{MAX_CONSECUTIVE_SKIPS} consecutive steps \\(up to step 20\\)"
    ):
        guard.check(_layer_with_grad(NAN), torch.tensor(1.0), step=20, sync_step=True)
    assert guard.skipped_steps == [*range(1, 10), *range(11, 21)]
    assert logged[-1] == {"nonfinite/skipped_steps": 18.0}  # 9 + 9 skipped before the 20th stopped


def test_skip_with_deepspeed_is_refused(tmp_path):
    config = tiny_run_config(tmp_path, training={"on_nonfinite": "skip", "deepspeed": "ds.json"})
    with pytest.raises(ConfigError, match="on_nonfinite=skip does not work with training.deepspeed"):
        from_dict(config)


# ----------------------------------------------------------------------------------------------
# Training a tiny model with a loss made NaN at one step


@pytest.fixture
def nan_loss_at_step(monkeypatch):
    """``nan_loss_at_step(k)``: the k-th loss computed by the Trainer (step k: one micro-batch per step) is NaN."""
    original = Trainer.compute_loss

    def poison(step: int) -> None:
        calls = []

        def compute_loss(self, model, inputs, *args, **kwargs):
            loss = original(self, model, inputs, *args, **kwargs)
            calls.append(1)
            return loss * NAN if len(calls) == step else loss

        monkeypatch.setattr(Trainer, "compute_loss", compute_loss)

    return poison


@pytest.mark.slow
def test_cli_stops_at_the_nan_step_with_one_line_and_writes_no_adapter(tmp_path, nan_loss_at_step, capsys):
    config = tiny_run_config(tmp_path, "badit", training={"max_steps": 6, "save_steps": 2})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    nan_loss_at_step(5)
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err  # progress bars, then the error
    run_dir = tmp_path / "run-badit-multitask"
    assert err.splitlines()[-1].startswith(
        f"badit train: error: {run_dir}: non-finite loss or gradient at step 5"
    )
    assert "Traceback" not in err
    assert not (run_dir / "adapter").exists() and not (run_dir / "metrics.json").exists()
    checkpoints = sorted(
        p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith("checkpoint-")
    )
    assert checkpoints == ["checkpoint-2", "checkpoint-4"]  # the steps before the NaN, kept
    logged = [json.loads(x) for x in (run_dir / "logs" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "loss" in r] == [1, 2, 3, 4]


class RecordParameters(TrainerCallback):
    """The trainable parameters and AdamW's first moments after every optimizer step."""

    def __init__(self):
        self.parameters: dict[int, dict[str, torch.Tensor]] = {}
        self.moments: dict[int, list[torch.Tensor]] = {}

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.parameters[state.global_step] = {
            n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad
        }
        self.moments[state.global_step] = [s["exp_avg"].clone() for s in optimizer.state.values()]


@pytest.mark.slow
def test_skip_mode_drops_exactly_the_nan_step_and_training_ends_finite(tmp_path, nan_loss_at_step):
    # regroup at step 4 (every 4 steps during the first 0.7 of 6): the skipped step 3 is in its window
    config = tiny_run_config(
        tmp_path,
        "badit",
        training={"max_steps": 6, "on_nonfinite": "skip"},
        method={"regroup_every": 4, "regroup_until": 0.7},
    )
    recorder = RecordParameters()
    nan_loss_at_step(3)
    metrics = run(from_dict(config), extra_callbacks=[recorder])
    assert metrics["run"]["global_step"] == 6
    after = recorder.parameters
    for name, value in after[3].items():
        assert torch.equal(value, after[2][name]), name  # step 3 was not applied
    for before, now in zip(recorder.moments[2], recorder.moments[3], strict=True):
        assert torch.equal(before, now)  # nor did it touch the optimizer state
    assert any(not torch.equal(after[4][n], after[3][n]) for n in after[3])  # step 4 was
    assert all(torch.isfinite(v).all() for v in after[6].values())
    run_dir = tmp_path / "run-badit-multitask"
    logged = [json.loads(x) for x in (run_dir / "logs" / "train_log.jsonl").read_text().splitlines()]
    assert [r.get("nonfinite/skipped_steps") for r in logged if r["step"] == 3] == [1.0]
    regroups = [json.loads(x) for x in (run_dir / "logs" / "regroup.jsonl").read_text().splitlines()]
    assert [r["step"] for r in regroups] == [4]
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
