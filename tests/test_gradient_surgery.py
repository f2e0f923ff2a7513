"""PCGrad (``training.gradient_surgery: pcgrad``): the projection on gradients worked by hand, and one
Trainer step on a tiny model against the same computation done by hand."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from transformers import TrainingArguments

from badit.experiments.config import ConfigError, from_dict
from badit.training.gradient_surgery import project_conflicting, random_orders
from badit.training.trainer import BaditTrainer
from tests.helpers import make_tiny_model


def test_two_conflicting_gradients_are_projected_onto_each_others_normal_plane():
    # g1 = (2, 0), g2 = (-1, 1): g1 . g2 = -2 < 0, |g2|^2 = 2, |g1|^2 = 4
    # g1' = g1 - (-2 / 2) g2 = (2, 0) + (-1, 1) = (1, 1)       (g1' . g2 = -1 + 1 = 0)
    # g2' = g2 - (-2 / 4) g1 = (-1, 1) + (1, 0) = (0, 1)       (g2' . g1 = 0)
    # update = g1' + g2' = (1, 2)   (the plain sum would be (1, 1))
    grads = torch.tensor([[2.0, 0.0], [-1.0, 1.0]])
    torch.testing.assert_close(project_conflicting(grads, [[1], [0]]), torch.tensor([1.0, 2.0]))


def test_only_conflicting_pairs_are_projected():
    # g3 = (0, 1) conflicts with neither: g1 . g3 = 0, g2 . g3 = 1, and g1' = (1, 1) . g3 = 1 > 0, so
    # g1' = (1, 1) and g2' = (0, 1) as above, g3' = g3: update (1, 1) + (0, 1) + (0, 1) = (1, 3)
    grads = torch.tensor([[2.0, 0.0], [-1.0, 1.0], [0.0, 1.0]])
    for orders in ([[1, 2], [0, 2], [0, 1]], [[2, 1], [2, 0], [1, 0]]):
        torch.testing.assert_close(project_conflicting(grads, orders), torch.tensor([1.0, 3.0]))
    # no conflict at all: the plain sum
    agreeing = torch.tensor([[1.0, 2.0], [3.0, -1.0]])  # dot = 3 - 2 = 1 > 0
    torch.testing.assert_close(project_conflicting(agreeing, [[1], [0]]), torch.tensor([4.0, 1.0]))


def test_the_order_of_projections_matters_and_is_random_per_task():
    # g1 = (1, 0), g2 = (-1, 1), g3 = (-1, -1); g2 projected against g1 then g3, or g3 then g1:
    #   g1 first: g2 . g1 = -1, |g1|^2 = 1: g2 -> (0, 1); then . g3 = -1, |g3|^2 = 2:
    #             -> (0, 1) + 0.5 (-1, -1) = (-0.5, 0.5)
    #   g3 first: g2 . g3 = 1 - 1 = 0: unchanged; then . g1 = -1: -> (0, 1)
    grads = torch.tensor([[1.0, 0.0], [-1.0, 1.0], [-1.0, -1.0]])
    first_g1 = project_conflicting(grads, [[1, 2], [0, 2], [0, 1]]) - project_conflicting(
        grads, [[1, 2], [2, 0], [0, 1]]
    )
    # the two updates differ only in g2's projection: (-0.5, 0.5) - (0, 1) = (-0.5, -0.5)
    torch.testing.assert_close(first_g1, torch.tensor([-0.5, -0.5]))
    orders = random_orders(4, random.Random(0))
    assert [sorted(o) for o in orders] == [[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]]
    assert orders == random_orders(4, random.Random(0))  # seeded: a resumed run projects alike


def _lora_model():
    torch.manual_seed(0)
    model = get_peft_model(
        make_tiny_model("llama"),
        LoraConfig(r=2, lora_alpha=4, lora_dropout=0.0, target_modules=["gate_proj"]),
    )
    with torch.no_grad():  # LoRA starts with B = 0, where A gets no gradient: give both a gradient
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return model


def _batch():
    # two tasks on the same prompts, with different answers: their gradients conflict
    g = torch.Generator().manual_seed(0)  # a seed whose two tasks conflict (asserted below)
    prompt = torch.randint(4, 128, (2, 6), generator=g)
    answers = torch.randint(4, 128, (4, 3), generator=g)
    input_ids = torch.cat([prompt.repeat(2, 1), answers], dim=1)  # rows 0, 1: task 0; rows 2, 3: task 1
    attention_mask = torch.ones_like(input_ids)
    input_ids[3, -1], attention_mask[3, -1] = 0, 0  # one padded position
    labels = input_ids.clone()
    labels[:, :6] = -100
    labels[3, -1] = -100
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "task_ids": torch.tensor([0, 0, 1, 1]),
    }


def test_a_pcgrad_training_step_equals_the_computation_by_hand(tmp_path):
    model, batch = _lora_model(), _batch()
    params = [p for p in model.parameters() if p.requires_grad]
    # by hand: each task's token-summed cross-entropy over the batch's 3 + 3 + 3 + 2 = 11 label tokens
    label_tokens = (batch["labels"][:, 1:] != -100).sum()
    assert label_tokens == 11
    task_grads, task_losses = [], []
    for task in (0, 1):
        rows = batch["task_ids"] == task
        logits = model(
            input_ids=batch["input_ids"][rows], attention_mask=batch["attention_mask"][rows]
        ).logits
        loss = (
            F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]),
                batch["labels"][rows][:, 1:].reshape(-1),
                reduction="sum",
            )
            / label_tokens
        )
        task_grads.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
        task_losses.append(loss.detach())
    g1, g2 = task_grads
    dot = torch.dot(g1, g2)
    assert dot < 0  # the case exercises the projection
    expected = (g1 - dot / g2.dot(g2) * g2) + (g2 - dot / g1.dot(g1) * g1)  # PCGrad with T = 2

    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    trainer = BaditTrainer(model=model, args=args, gradient_surgery="pcgrad")
    returned = trainer.training_step(model, dict(batch))
    got = torch.cat([p.grad.reshape(-1) for p in params])
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    # the loss reported is the ordinary batch loss (the tasks' shares add up to it)
    plain = model(**{k: v for k, v in batch.items() if k != "task_ids"}).loss
    torch.testing.assert_close(returned, plain.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(returned, sum(task_losses), rtol=1e-5, atol=1e-6)
    # and differs from the plain gradient (which is g1 + g2)
    assert not torch.allclose(got, g1 + g2, rtol=1e-3)


def test_gradient_accumulation_projects_the_whole_steps_task_gradients(tmp_path):
    # two micro-batches, each with one task: the surgery waits for the optimizer step and sees both
    model, batch = _lora_model(), _batch()
    params = [p for p in model.parameters() if p.requires_grad]
    args = TrainingArguments(
        output_dir=str(tmp_path), report_to=[], use_cpu=True, gradient_accumulation_steps=2
    )
    trainer = BaditTrainer(model=model, args=args, gradient_surgery="pcgrad")
    trainer.current_gradient_accumulation_steps = 2
    halves = [{k: v[rows] for k, v in batch.items()} for rows in (slice(0, 2), slice(2, 4))]
    trainer.accelerator.gradient_state._set_sync_gradients(False)
    trainer.training_step(model, halves[0])
    assert all(p.grad is None for p in params)  # held per task until the step
    trainer.accelerator.gradient_state._set_sync_gradients(True)
    trainer.training_step(model, halves[1])
    got = torch.cat([p.grad.reshape(-1) for p in params])
    g1, g2 = (trainer_free_task_grad(model, h, params) for h in halves)
    dot = g1.dot(g2)
    assert dot < 0
    expected = (g1 - dot / g2.dot(g2) * g2) + (g2 - dot / g1.dot(g1) * g1)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def trainer_free_task_grad(model, half, params):
    """The gradient of one micro-batch's mean token loss divided by the 2 accumulation steps."""
    loss = model(**{k: v for k, v in half.items() if k != "task_ids"}).loss / 2
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])


def test_a_pcgrad_run_is_labelled_apart_from_the_plain_method():
    from badit.experiments.folder import base_method, method_label

    config = from_dict({"method": {"name": "lora"}, "training": {"gradient_surgery": "pcgrad"}})
    assert method_label(config) == "lora+pcgrad" and base_method("lora+pcgrad") == "lora"
    assert method_label(from_dict({"method": {"name": "lora"}})) == "lora"


def test_config_field_is_checked(tmp_path):
    assert from_dict({}).training.gradient_surgery == "none"
    assert from_dict({"training": {"gradient_surgery": "pcgrad"}}).training.gradient_surgery == "pcgrad"
    with pytest.raises(ConfigError, match="training.gradient_surgery must be one of none, pcgrad"):
        from_dict({"training": {"gradient_surgery": "cagrad"}})
    for setting in ("single", "continual"):  # one task at a time: nothing to project
        with pytest.raises(
            ConfigError, match=f"pcgrad projects .* setting {setting} trains one task at a time"
        ):
            from_dict({"setting": setting, "training": {"gradient_surgery": "pcgrad"}})
    with pytest.raises(ValueError, match="gradient_surgery must be one of"):
        BaditTrainer(
            model=_lora_model(),
            args=TrainingArguments(output_dir=str(tmp_path), report_to=[]),
            gradient_surgery="x",
        )


def test_the_command_refuses_pcgrad_in_setting_single_in_one_line(tmp_path, capsys):
    from badit.cli.main import main

    config = tmp_path / "c.yaml"
    config.write_text("setting: single\ntraining: {gradient_surgery: pcgrad}\n", encoding="utf-8")
    assert main(["train", str(config), f"output_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "c.yaml" in err and "use setting: multitask" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_badit_trains_with_pcgrad_through_the_run_config(tmp_path):
    from badit.data import load_tasks
    from badit.experiments.folder import StageFolder
    from badit.experiments.stage import RunContext, adapter_model, train
    from tests.helpers import tiny_run_config

    config = from_dict(
        tiny_run_config(
            tmp_path,
            "badit",
            training={"max_steps": 6, "learning_rate": 1e-2, "gradient_surgery": "pcgrad"},
            method={"regroup_every": 3},
        )
    )
    model, tokenizer = adapter_model(config)
    tasks = load_tasks(config.data.path, "train")
    ctx = RunContext.create(config, [t.name for t in tasks], is_main=True)
    result = train(ctx, model, tokenizer, tasks, StageFolder(tmp_path / "stage"))
    assert result.global_step == 6
    losses = [r["loss"] for r in result.log_history if "loss" in r]
    assert len(losses) == 6 and losses[-1] < losses[0], losses
    log = (tmp_path / "stage" / "logs" / "train_log.jsonl").read_text()
    assert "regroup/moved" in log  # regrouping still sees the (per-task) backward passes
