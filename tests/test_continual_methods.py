"""The continual methods (badit.training.continual): O-LoRA's penalty, InfLoRA's subspaces and branch
design, each on a case worked by hand, then what each guarantees after training, then `badit train`."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from peft import PeftModel
from safetensors.torch import load_file
from transformers import TrainerCallback

from badit.cli.main import main
from badit.data import DataCollator
from badit.experiments.config import ConfigError, from_dict
from badit.experiments.config import _check_method as check_method_section
from badit.experiments.settings import run
from badit.experiments.sweep import SweepError, load_sweep, parse_sweep, plan_selection
from badit.training.continual import (
    INFLORA_A_SCALE,
    ContinualCallback,
    GainLoraGates,
    build_continual_model,
    design_branch,
    extend_bases,
    extend_basis,
    factors,
    input_covariances,
    load_continual_adapter,
    lora_layers,
    olora_penalty,
    orthogonality,
    project_gate_update,
    restore_old_branches,
    set_new_branch,
)
from badit.training.methods import MethodConfig, effective_scale
from badit.training.trainer import save_adapter
from tests.helpers import SimulatedKill, char_tokenizer, make_tiny_model, tiny_run_config


def _method(name: str, **fields) -> MethodConfig:
    # branch rank R = num_experts * r = 2
    return MethodConfig(name=name, r=1, num_experts=2, top_k=2, lora_dropout=0.0, **fields)


def _next_stage(model, tmp_path, method: MethodConfig, name: str = "stage"):
    """Save ``model``'s adapter as a stage would and build the next stage's model from it."""
    folder = tmp_path / name
    save_adapter(model, char_tokenizer(), folder)
    return build_continual_model(make_tiny_model(), method, seed=1, init_adapter=folder), folder


def _train(model, input_ids, steps: int, lr: float = 1e-2, penalty=None, weight_decay: float = 0.0) -> None:
    """A plain loop doing what a stage's Trainer does with the continual callback."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=weight_decay)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=input_ids, labels=input_ids).loss
        if penalty is not None:
            loss = loss + penalty(model)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        restore_old_branches(model, model.continual_state)
    model.eval()


def _max_cosine(model) -> float:
    """Largest |cosine| between an old and a new A row over all layers."""
    state, worst = model.continual_state, 0.0
    for _, layer in lora_layers(model):
        a = torch.nn.functional.normalize(factors(layer)[0].detach(), dim=1)
        worst = max(worst, (a[: state.old] @ a[state.old :].T).abs().max().item())
    return worst


# ----------------------------------------------------------------------------------------------
# O-LoRA


def test_orthogonality_term_on_2x3_matrices_by_hand():
    old = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 0.0]])
    new = torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, -1.0]])
    # old @ new^T = [[1*1 + 0*1 + 2*0, 1*0 + 0*2 + 2*(-1)], [0*1 + 1*1 + 0*0, 0*0 + 1*2 + 0*(-1)]]
    #             = [[1, -2], [1, 2]]  ->  |.|_1 = 1 + 2 + 1 + 2 = 6
    assert orthogonality(old, new).item() == 6.0
    assert orthogonality(old, torch.tensor([[0.0, 0.0, 1.0]]) * 0).item() == 0.0


def test_olora_penalty_of_a_model_sums_the_layers(tmp_path):
    method = _method("o-lora", target_modules=["q_proj"])  # 2 layers, branch rank 2
    model, _ = _next_stage(build_continual_model(make_tiny_model(), method, seed=0), tmp_path, method)
    assert model.continual_state.branches == 2 and model.continual_state.old == 2
    with torch.no_grad():
        for _, layer in lora_layers(model):
            a, b = factors(layer)
            a.zero_()
            a[:2, :3] = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 0.0]])  # old rows (padded with 0 to 64)
            a[2:, :3] = torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, -1.0]])  # new rows
            b.zero_()
            b[:4, 2:] = torch.tensor([[3.0, 0.0], [0.0, 0.0], [0.0, 4.0], [0.0, 0.0]])  # new B, |.|_F = 5
    state = model.continual_state
    # per layer: lambda_1 * 6 = 0.5 * 6 = 3; two layers: 6
    assert olora_penalty(model, state, 0.5, 0.0).item() == pytest.approx(6.0)
    # + lambda_2 * (|A_new|_F + |B_new|_F) per layer = 0.1 * (sqrt(1+1+4+1) + 5) = 0.1 * (sqrt(7) + 5)
    assert olora_penalty(model, state, 0.5, 0.1).item() == pytest.approx(6.0 + 2 * 0.1 * (math.sqrt(7) + 5))


def test_olora_trains_new_rows_orthogonal_to_the_frozen_old_ones(tmp_path):
    method = _method("o-lora", target_modules=["q_proj", "v_proj"])
    first = build_continual_model(make_tiny_model(), method, seed=0)
    with torch.no_grad():  # a trained first branch: B no longer zero
        for _, layer in lora_layers(first):
            factors(layer)[1].normal_()
    ids = torch.randint(4, 80, (4, 12), generator=torch.Generator().manual_seed(0))
    runs = {}
    for weight in (0.0, 0.5):  # without the penalty (a plain second LoRA branch), with O-LoRA's
        model, _ = _next_stage(first, tmp_path, method, name=f"w{weight}")
        old = {
            n: (factors(layer)[0][:2].clone(), factors(layer)[1][:, :2].clone())
            for n, layer in lora_layers(model)
        }
        start = _max_cosine(model)
        _train(
            model,
            ids,
            steps=40,
            penalty=lambda m, w=weight: olora_penalty(m, m.continual_state, w, 0.0),
            weight_decay=0.1,
        )
        for name, layer in lora_layers(model):  # the old branch did not move (weight decay included)
            assert torch.equal(factors(layer)[0][:2], old[name][0])
            assert torch.equal(factors(layer)[1][:, :2], old[name][1])
        runs[weight] = (start, _max_cosine(model))
    # random 64-d rows start at |cos| up to ~0.24; without the penalty they stay there, with it they fall
    # ten-fold (measured: 0.24 -> 0.024)
    assert runs[0.0][0] > 0.15 and runs[0.0][1] > 0.15
    assert runs[0.5][1] < 0.05 < runs[0.5][0]


# ----------------------------------------------------------------------------------------------
# InfLoRA


def test_extend_basis_by_hand():
    c = torch.diag(torch.tensor([0.4, 0.3, 0.2, 0.1]))
    e = torch.eye(4)
    # first task, paper: shares 0.4, 0.7, 0.9, 1.0; the fewest reaching 0.65 are 2 -> e1, e2
    first = extend_basis(None, c, 0.65, "paper")
    assert torch.allclose(first.abs(), e[:, :2])
    # code: energies squared 0.16, 0.09, 0.04, 0.01 (sum 0.30), shares 0.533, 0.833: one short of 0.65 -> e1
    assert torch.allclose(extend_basis(None, c, 0.65, "code").abs(), e[:, :1])
    # next task with C = diag(0.5, 0.3, 0.2, 0) and basis e1: 0.5 already inside; adding e2 reaches 0.8
    # >= 0.75, so one direction is added
    grown = extend_basis(e[:, :1], torch.diag(torch.tensor([0.5, 0.3, 0.2, 0.0])), 0.75, "paper")
    assert torch.allclose(grown.abs(), e[:, :2])
    # at 0.45 nothing is added (the old subspace already holds 0.5 of the new inputs' energy)
    same = extend_basis(e[:, :1], torch.diag(torch.tensor([0.5, 0.3, 0.2, 0.0])), 0.45, "paper")
    assert same.shape == (4, 1)


def test_design_branch_by_hand():
    c = torch.diag(torch.tensor([4.0, 3.0, 2.0, 1.0]))
    basis = torch.eye(4)[:, :1]  # the old tasks' inputs lie along e1
    rows = design_branch(c, basis, rank=2, energy="paper")
    # the top directions outside e1 are e2 and e3, each scaled by 1/sqrt(3)
    assert torch.allclose(rows.abs(), torch.eye(4)[1:3] * INFLORA_A_SCALE, atol=1e-6)
    assert torch.allclose(design_branch(c, basis, 2, "code").abs(), rows.abs(), atol=1e-6)


def _inflora_stage_two(tmp_path, threshold: float, design: bool = True):
    """Stage 1 of InfLoRA on task 1 (token ids 4..39), then stage 2 on task 2 (ids 40..78), by the calls
    the continual callback makes; returns (stage-1 logits on task 1, stage-2 logits on task 1, stage-2
    model, task-1 covariances under the stage-2 model before its training)."""
    method = _method(
        "inflora", target_modules=["q_proj", "v_proj", "down_proj"], subspace_threshold=threshold
    )
    g = torch.Generator().manual_seed(0)
    task1, task2 = torch.randint(4, 40, (8, 12), generator=g), torch.randint(40, 79, (8, 12), generator=g)

    def batches(ids):
        return [{"input_ids": ids, "attention_mask": torch.ones_like(ids)}]

    model = build_continual_model(make_tiny_model(), method, seed=0)
    set_new_branch(model, model.continual_state, input_covariances(model, batches(task1)), "paper")
    _train(model, task1, steps=30)
    extend_bases(model.continual_state, input_covariances(model, batches(task1)), threshold, "paper")
    with torch.no_grad():
        before = model(input_ids=task1).logits
    second, _ = _next_stage(model, tmp_path, method)
    old_inputs = input_covariances(second, batches(task1))
    if design:
        set_new_branch(second, second.continual_state, input_covariances(second, batches(task2)), "paper")
    else:  # control: the new branch's A left at PEFT's random init, and trained like B
        for _, layer in lora_layers(second):
            factors(layer)[0].requires_grad_(True)
    _train(second, task2, steps=30)
    with torch.no_grad():
        after = second(input_ids=task1).logits
    return before, after, second, old_inputs


def test_inflora_new_branch_leaves_old_inputs_alone(tmp_path):
    before, after, model, old_inputs = _inflora_stage_two(tmp_path, threshold=0.995)
    state = model.continual_state
    for name, layer in lora_layers(model):
        new_a = factors(layer)[0].detach()[state.old :]
        # every new A row is orthogonal to the old tasks' basis ...
        assert (new_a @ state.bases[name]).abs().max() < 1e-5
        # ... so the new branch sees at most (1 - threshold) / 3 of the old inputs' energy: rows are
        # orthonormal / sqrt(3) and at most 1 - 0.995 of that energy lies outside the basis
        c = old_inputs[name]
        seen = torch.trace(new_a @ c @ new_a.T) / torch.trace(c)
        assert seen <= (1 - 0.995) / 3 + 1e-6


@pytest.mark.slow
def test_inflora_keeps_old_task_logits_where_a_plain_branch_does_not(tmp_path):
    # end to end on the tiny model (2 layers, 64-96 dims, scale 32): with a tight threshold the
    # logits on task 1 move by 1.6% (measured) after stage 2; a second branch with a random,
    # trained A moves them by far more
    before, after, *_ = _inflora_stage_two(tmp_path / "inflora", threshold=0.99999)
    kept = ((after - before).norm() / before.norm()).item()
    before, after, *_ = _inflora_stage_two(tmp_path / "plain", threshold=0.99999, design=False)
    moved = ((after - before).norm() / before.norm()).item()
    assert kept < 0.03 and moved > 10 * kept


# ----------------------------------------------------------------------------------------------
# Registry and `badit train`


def test_scale_and_setting_of_the_continual_methods(tmp_path, capsys):
    method = _method("o-lora")  # alpha 32 * K=2 = 64 for rank 2: 32 per component, as lora's
    assert effective_scale(method) == effective_scale(_method("lora")) == 32.0
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_run_config(tmp_path, "o-lora", "multitask")))
    assert main(["train", str(config)]) == 2
    assert "o-lora is a continual method" in capsys.readouterr().err
    zero2 = str(Path(__file__).parents[1] / "configs" / "ds_zero2.json")
    gated = from_dict(tiny_run_config(tmp_path, "gainlora", "continual"))
    gated.training.deepspeed = zero2  # (from_dict would first ask for the deepspeed package, absent here)
    with pytest.raises(ConfigError, match="gainlora does not work with training.deepspeed"):
        check_method_section(gated, "config")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["o-lora", "inflora", "gainlora"])
def test_badit_train_continual(tmp_path, name):
    order = ["demo_reverse_words", "demo_copy_words"]
    config = tiny_run_config(
        tmp_path,
        name,
        "continual",
        data={"task_order": order},
        training={"max_steps": 2},
        evaluation={"max_examples_per_task": 2, "continual_base_scores": False},
    )
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["train", str(path)]) == 0
    run = tmp_path / f"run-{name}-continual"
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics["continual"]["score_matrix"]["rougeL"]) == 2
    adapter = run / "stages" / "01-demo_copy_words" / "adapter"
    info = json.loads((adapter / "continual.json").read_text())
    saved_name = "gainlora/inflora" if name == "gainlora" else name
    assert info == {"method": saved_name, "branch_rank": 6, "branches": 2}  # R = num_experts 3 * r 2
    if name == "gainlora":  # `badit eval` loads the gates too and finds the same predictions
        assert main(["eval", str(run), "--output", str(tmp_path / "again")]) == 0

        def predictions(folder):
            rows = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]
            return {row["id"]: row["prediction"] for row in rows}

        assert predictions(tmp_path / "again") == predictions(run)
    # a plain PEFT LoRA adapter of rank 2 * 6: PeftModel loads it (as trained, for o-lora and inflora)
    loaded = PeftModel.from_pretrained(make_tiny_model(), str(adapter))
    assert loaded.peft_config["default"].r == 12
    log = (run / "stages" / "01-demo_copy_words" / "logs" / "train_log.jsonl").read_text()
    assert ('"loss_term"' in log) == (name == "o-lora")  # O-LoRA's penalty, logged beside the loss
    first = run / "stages" / "00-demo_reverse_words" / "adapter"
    if name == "inflora":  # the second branch's A was designed outside the first task's input subspace
        bases = load_file(first / "continual.safetensors")
        tensors = load_file(adapter / "adapter_model.safetensors")
        for key, basis in bases.items():
            a = tensors[
                key.removeprefix("basis.base_model.model.").join(["base_model.model.", ".lora_A.weight"])
            ]
            assert a.shape == (12, basis.shape[0]) and (a[6:] @ basis).abs().max() < 1e-5
    old_a = {k: v for k, v in PeftModel.from_pretrained(make_tiny_model(), str(first)).state_dict().items()}
    for key, value in loaded.state_dict().items():  # stage 2 kept stage 1's branch as it was
        if ".lora_A." in key:
            assert torch.equal(value[:6], old_a[key])
        elif ".lora_B." in key:
            assert torch.equal(value[:, :6], old_a[key])


# ----------------------------------------------------------------------------------------------
# GainLoRA


def test_gate_coefficient_by_hand():
    gates = GainLoraGates(dim=2, hidden=2)
    with torch.no_grad():
        gates.w1.copy_(torch.eye(2))
        gates.w2.copy_(torch.eye(2))
        gates.key.copy_(torch.tensor([1.0, 0.0]))
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    # x = e1: hidden = silu(e1) = (0.7311, 0), output = silu(hidden) = (0.4835, 0): cos with the key = 1,
    #   a = |2 sigmoid(4) - 1| = 2 * 0.98201 - 1 = 0.96403
    # x = e2: output (0, 0.4835) is orthogonal to the key: cos = 0, a = |2 * 0.5 - 1| = 0
    # x = -e1: hidden silu(-1) = -0.2689, output silu(-0.2689) = -0.1173: cos = -1, a = |2 sigmoid(-4) - 1| = 0.96403
    a = gates(x)
    assert a.shape == (3, 1)
    assert a[:, 0].tolist() == pytest.approx([0.96403, 0.0, 0.96403], abs=1e-5)


def test_gate_update_projected_out_of_the_old_inputs_by_hand():
    gates = GainLoraGates(dim=2, hidden=1)
    with torch.no_grad():
        gates.w1.copy_(torch.tensor([[1.0, 1.0]]))
    before = {
        "w1": gates.w1.detach().clone(),
        "w2": gates.w2.detach().clone(),
        "key": gates.key.detach().clone(),
    }
    with torch.no_grad():
        gates.w1.add_(torch.tensor([[0.5, -0.25]]))  # an optimizer step
    project_gate_update(gates, before, {"basis0": torch.tensor([[1.0], [0.0]])}, renormalise=False)
    # the step's part along the old inputs' direction e1 is removed: w1 = (1, 1) + (0, -0.25)
    assert gates.w1.tolist() == [[1.0, 0.75]]
    # so an old input x = e1 still gives w1 x = 1
    assert (gates.w1 @ torch.tensor([1.0, 0.0])).item() == 1.0


def _examples(low: int, high: int, generator, n: int = 16) -> list[dict]:
    """Tokenised examples as a stage's (8 prompt tokens, 4 answer tokens) with ids in [low, high)."""
    rows = []
    for _ in range(n):
        prompt = torch.randint(low, high, (8,), generator=generator).tolist()
        answer = torch.randint(low, high, (4,), generator=generator).tolist()
        rows.append({"input_ids": prompt + answer, "labels": [-100] * 8 + answer})
    return rows


def _stage_with_callback(model, method, examples, steps: int = 30) -> None:
    """What train_stage's Trainer does with the continual callback, in a plain loop."""
    collator = DataCollator(pad_token_id=0)
    callback = ContinualCallback(model, method, examples, collator, batch_size=8)
    args, state = SimpleNamespace(should_save=True), SimpleNamespace(global_step=0)
    callback.on_train_begin(args, state, None, model=model)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.01
    )
    batch = {k: v for k, v in collator(examples).items() if k != "task_ids"}
    model.train()
    for _ in range(steps):
        loss = model(**batch).loss
        term = callback.loss_term(model)
        loss = loss + term if term is not None else loss
        optimizer.zero_grad()
        loss.backward()
        callback.on_pre_optimizer_step(args, state, None, model=model)
        optimizer.step()
        callback.on_optimizer_step(args, state, None, model=model)
        callback.on_step_end(args, state, None, model=model)
        state.global_step += 1
    callback.on_train_end(args, state, None, model=model)
    model.eval()


def _logits_and_gates(model, examples):
    batch = DataCollator(pad_token_id=0)(examples)
    with torch.no_grad():
        out = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
        )
    return out.logits, model.continual_gates.coefficients


@pytest.mark.parametrize("base", ["inflora", "o-lora"])
def test_gainlora_new_gate_is_zero_on_old_inputs(tmp_path, base):
    method = _method(
        "gainlora",
        gainlora_base=base,
        target_modules=["q_proj", "v_proj", "down_proj"],
        subspace_threshold=0.99999,
    )
    g = torch.Generator().manual_seed(0)
    task1, task2 = _examples(4, 40, g), _examples(40, 79, g)
    first = build_continual_model(make_tiny_model(), method, seed=0)
    _stage_with_callback(first, method, task1)
    before, _ = _logits_and_gates(first, task1)
    second, _ = _next_stage(first, tmp_path, method)
    _stage_with_callback(second, method, task2)
    after, gates = _logits_and_gates(second, task1)
    _, gates_new = _logits_and_gates(second, task2)
    # measured (threshold 0.99999): the new gate gives <= 2e-6 on task 1's prompts and 0.33 / 0.86
    # (inflora / o-lora) on task 2's; task 1's logits move by < 3e-6 relative
    assert gates[:, 1].max() < 1e-4 and gates_new[:, 1].mean() > 0.2
    assert ((after - before).norm() / before.norm()).item() < 1e-4
    # the saved folder, loaded by badit's loader, gives the same model (gates included)
    folder = tmp_path / "final"
    save_adapter(second, char_tokenizer(), folder)
    loaded = load_continual_adapter(make_tiny_model(), folder).eval()
    assert torch.allclose(_logits_and_gates(loaded, task1)[0], after, atol=1e-5)


def test_gainlora_gate_at_the_default_threshold(tmp_path):
    method = _method("gainlora", target_modules=["q_proj", "v_proj", "down_proj"])  # threshold 0.995
    g = torch.Generator().manual_seed(0)
    task1, task2 = _examples(4, 40, g), _examples(40, 79, g)
    first = build_continual_model(make_tiny_model(), method, seed=0)
    _stage_with_callback(first, method, task1)
    second, _ = _next_stage(first, tmp_path, method)
    _stage_with_callback(second, method, task2)
    # measured: mean 0.022, max 0.047 on task 1 (the 0.5% of the gate outputs' energy left out of the
    # basis), 0.64 on task 2
    _, old = _logits_and_gates(second, task1)
    _, new = _logits_and_gates(second, task2)
    assert old[:, 1].mean() < 0.05 and new[:, 1].mean() > 10 * old[:, 1].mean()


class _KillInSecondStage(TrainerCallback):
    """Stops training right after the second stage's checkpoint of ``step`` (the first stage saved one too)."""

    def __init__(self, step: int):
        self.step, self.seen = step, 0

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            self.seen += 1
            if self.seen == 2:
                raise SimulatedKill


@pytest.mark.slow
def test_gainlora_killed_in_its_second_stage_resumes_to_the_same_adapter(tmp_path):
    sections = dict(
        data={"task_order": ["demo_reverse_words", "demo_copy_words"]},
        training={"max_steps": 2, "save_steps": 1, "save_total_limit": None, "weight_decay": 0.1},
        evaluation={"max_examples_per_task": 1, "continual_base_scores": False},
    )
    whole = tiny_run_config(tmp_path, "gainlora", "continual", output_dir=str(tmp_path / "whole"), **sections)
    killed = tiny_run_config(
        tmp_path, "gainlora", "continual", output_dir=str(tmp_path / "killed"), **sections
    )
    run(from_dict(whole))
    with pytest.raises(SimulatedKill):
        run(from_dict(killed), extra_callbacks=[_KillInSecondStage(1)])
    stage = Path("stages") / "01-demo_copy_words"
    assert (
        tmp_path / "killed" / stage / "checkpoints" / "checkpoint-1" / "gainlora_gate.safetensors"
    ).is_file()
    run(from_dict(killed), resume=True)
    for name in ("adapter_model.safetensors", "continual.safetensors"):  # LoRA weights; gates and bases
        expected = load_file(tmp_path / "whole" / stage / "adapter" / name)
        resumed = load_file(tmp_path / "killed" / stage / "adapter" / name)
        assert expected.keys() == resumed.keys()
        for key in expected:
            assert torch.equal(resumed[key], expected[key]), key  # bitwise


def test_continual_sweep_file_and_a_bad_interference_list(tmp_path):
    sweep = load_sweep(Path(__file__).parents[1] / "configs" / "sweeps" / "continual_cpu.yaml")
    assert sweep.methods == ["badit", "lora", "o-lora", "inflora", "gainlora"]
    assert {job.method for job in plan_selection(sweep)} == set(sweep.methods)
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(tiny_run_config(tmp_path, "lora", "continual")))
    bad = {"base": str(base), "methods": ["o-lora"], "learning_rates": [1e-3], "seeds": [1]}
    bad |= {"interference": ["o-lora"], "output_dir": str(tmp_path / "out")}  # interference runs `single`
    with pytest.raises(SweepError, match="o-lora is a continual method"):
        parse_sweep(bad, tmp_path / "sweep.yaml")
