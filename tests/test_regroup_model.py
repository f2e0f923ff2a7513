"""Regrouping a whole PEFT BADIT model trained with a plain PyTorch loop."""

from __future__ import annotations

import torch
from peft import get_peft_model

import badit
from badit.regrouping import regroup_summary
from badit.regrouping.gradients import gradient_windows, iter_badit_layers
from tests.helpers import make_tiny_model

TARGETS = ["gate_proj", "up_proj"]


def badit_model(family: str, **config):
    fields = dict(r=4, num_experts=4, top_k=4, lora_dropout=0.0, target_modules=TARGETS, **config)
    return get_peft_model(make_tiny_model(family), badit.BaditConfig(**fields))


def batch(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, 128, (2, 12), generator=generator)
    labels = input_ids.clone()
    labels[:, :6] = -100  # the first half is the prompt
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}


def test_regroup_preserves_logits_under_uniform_routing(family):
    model = badit_model(family)
    layers = list(iter_badit_layers(model))
    assert len(layers) == 2 * len(TARGETS)
    assert all("default" in gradient_windows(layer) for _, layer in layers)  # attached by the model
    for name, param in model.named_parameters():
        if "badit_router" in name:
            param.requires_grad_(False)  # keep the zero router: every expert weighs the same
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for step in range(3):
        optimizer.zero_grad()
        model(**batch(step)).loss.backward()
        optimizer.step()

    model.eval()
    probe = batch(99)
    with torch.no_grad():
        before = model(**probe).logits
    stats = badit.regroup(model, optimizer)
    with torch.no_grad():
        after = model(**probe).logits

    assert set(stats) == {layer.layer_name for _, layer in layers} == set(badit.get_routing_weights(model))
    assert sum(layer["moved"] for layer in stats.values()) > 0
    for layer in stats.values():
        assert layer["kmeans_objective"] <= (1 - layer["intra_cosine_before"]) * 16 + 1e-9
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)
    summary = regroup_summary(stats)
    assert summary["layers"] == len(layers)
    assert summary["moved"] == sum(layer["moved"] for layer in stats.values())


def test_regroup_disabled_tracks_nothing():
    model = badit_model("llama", regroup=False)
    assert badit.attach_gradient_tracking(model) == 0
    model(**batch(0)).loss.backward()
    assert all(not gradient_windows(layer) for _, layer in iter_badit_layers(model))
    assert badit.regroup(model) == {}


def test_ema_decay_comes_from_the_config():
    model = badit_model("llama", regroup_ema=0.9)
    windows = [gradient_windows(layer)["default"] for _, layer in iter_badit_layers(model)]
    assert windows and all(window.ema == 0.9 for window in windows)
