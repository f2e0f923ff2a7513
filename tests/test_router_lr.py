"""``method.router_lr_multiplier``: the routers train at a multiple of the adapter's learning rate."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model
from transformers import TrainingArguments

from badit.training.methods import MethodConfig, build_peft_config, check_method
from badit.training.trainer import BaditTrainer, scale_router_lr
from tests.helpers import make_tiny_model

LR = 1e-3


def badit_model():
    torch.manual_seed(0)
    return get_peft_model(make_tiny_model("llama"), build_peft_config(MethodConfig(name="badit")))


def test_trainer_puts_routers_in_their_own_group(tmp_path):
    model = badit_model()
    args = TrainingArguments(output_dir=str(tmp_path), learning_rate=LR, weight_decay=0.0, report_to=[])
    optimizer = BaditTrainer(model=model, args=args, router_lr_multiplier=10.0).create_optimizer()
    routers = {id(p) for n, p in model.named_parameters() if ".badit_router." in n}
    trainable = [p for p in model.parameters() if p.requires_grad]
    by_lr = {}
    for group in optimizer.param_groups:
        by_lr.setdefault(round(group["lr"], 9), set()).update(id(p) for p in group["params"])
    # tiny llama: 2 layers x gate_proj (the default target) = 2 routers; every trainable tensor once
    assert len(routers) == 2
    assert by_lr == {round(LR * 10, 9): routers, LR: {id(p) for p in trainable} - routers}


def test_one_adam_step_moves_routers_multiplier_times_further():
    # AdamW's first step moves every weight with a nonzero gradient by lr * g / (|g| + eps) ~ lr.
    model = badit_model()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=LR, weight_decay=0.0)
    assert scale_router_lr(optimizer, model, 5.0) == 2
    named = dict(model.named_parameters())
    router = next(n for n in named if ".badit_router." in n)
    expert_a = next(n for n in named if ".badit_A." in n)
    before = {n: named[n].detach().clone() for n in (router, expert_a)}
    ids = torch.randint(3, 128, (4, 16), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[:, :8] = -100  # the prompt, which the routers pool
    model(input_ids=ids, labels=labels).loss.backward()
    optimizer.step()
    for name, lr in ((router, LR * 5), (expert_a, LR)):
        change = (named[name].detach() - before[name]).abs()
        moved = change[named[name].grad.abs() > 1e-6]  # entries with a gradient well above eps
        assert moved.numel() > 0
        torch.testing.assert_close(moved, torch.full_like(moved, lr), rtol=1e-2, atol=0)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf"), float("nan")])
def test_multiplier_must_be_positive_and_finite(bad):
    with pytest.raises(ValueError, match="router_lr_multiplier"):
        check_method(MethodConfig(name="badit", router_lr_multiplier=bad))
