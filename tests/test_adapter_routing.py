"""Routing: mixing weights, masked pooling, the vectorised layer against a per-sequence reference."""

import math

import pytest
import torch
import torch.nn.functional as F
from peft import get_peft_model

import badit
from badit.adapter.layer import BaditLinear
from badit.adapter.routing import RoutingState, masked_mean, mixing_weights
from tests.helpers import make_tiny_model


def test_dense_mixing_weights_are_scaled_softmax():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [math.log(3.0), 0.0, 0.0, 0.0]])
    torch.testing.assert_close(
        mixing_weights(logits, top_k=4, scale=4.0), torch.tensor([[1.0] * 4, [2.0, 2 / 3, 2 / 3, 2 / 3]])
    )
    torch.testing.assert_close(mixing_weights(logits, top_k=4, scale=1.0).sum(-1), torch.ones(2))


def test_top_k_keeps_the_largest_logits_and_renormalises():
    logits = torch.tensor([[0.5, math.log(3.0) + 0.5, -2.0, 0.5 - 5.0]])
    # Keep experts 1 and 0 (largest logits), softmax over them: 3/4 and 1/4, then times the scale.
    torch.testing.assert_close(
        mixing_weights(logits, top_k=2, scale=4.0), torch.tensor([[1.0, 3.0, 0.0, 0.0]])
    )
    torch.testing.assert_close(
        mixing_weights(logits, top_k=1, scale=1.0), torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    )


def test_masked_mean_counts_only_selected_tokens():
    x = torch.arange(24, dtype=torch.float32).view(2, 3, 4)
    mask = torch.tensor([[True, False, True], [False, False, False]])
    expected = torch.stack([(x[0, 0] + x[0, 2]) / 2, torch.zeros(4)])
    torch.testing.assert_close(masked_mean(x, mask), expected)
    torch.testing.assert_close(masked_mean(x, None), x.mean(dim=1))


@pytest.mark.parametrize("gate_kind", ["components", "delta"])
def test_batched_layer_equals_a_per_sequence_reference(gate_kind):
    config = badit.BaditConfig(r=2, num_experts=4, top_k=3, lora_dropout=0.0, regroup=False, gate=gate_kind)
    config.router_input = "raw"  # the reference below pools the raw inputs
    model = get_peft_model(make_tiny_model("llama"), config)
    layer = next(m for m in model.modules() if isinstance(m, BaditLinear))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        layer.badit_router["default"].weight.normal_(0, 1, generator=g)
        layer.badit_A["default"].add_(
            0.3 * torch.randn(layer.badit_A["default"].shape, generator=g)
        )  # trained
    x = torch.randn(3, 5, 64, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    state = RoutingState()
    state.prompt_mask = mask
    layer.routing_state = state
    with torch.no_grad():
        out = layer(x)
    a, b, s = layer.badit_A["default"], layer.badit_B["default"], layer.badit_state["default"].scaling
    a0, b0 = layer.badit_A0["default"], layer.badit_B0["default"]
    residual = layer.get_base_layer().weight
    for i in range(3):
        logits = layer.badit_router["default"].weight @ x[i, mask[i]].mean(dim=0)
        kept = logits.topk(3).indices
        gate = torch.zeros(4)
        gate[kept] = 4.0 * F.softmax(logits[kept], dim=0)
        e2 = [slice(2 * e, 2 * e + 2) for e in range(4)]
        delta = sum(gate[e] * b[:, e2[e]] @ a[e2[e]] for e in range(4))
        if gate_kind == "delta":  # + s B0 (1 - g) A0: the pretrained components keep weight 1
            delta = delta + sum((1 - gate[e]) * b0[:, e2[e]] @ a0[e2[e]] for e in range(4))
        torch.testing.assert_close(out[i], x[i] @ (residual + s * delta).T, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(layer.badit_state["default"].routing_weights[i], gate)
        assert (gate == 0).sum() == 1


def test_prompt_mask_argument_overrides_labels():
    model = get_peft_model(make_tiny_model("llama"), badit.BaditConfig(regroup=False)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "badit_router" in name:
                p.normal_(0, 0.5)
    ids = torch.randint(3, 128, (2, 8))
    prompt_mask = torch.zeros(2, 8, dtype=torch.bool)
    prompt_mask[:, :3] = True
    with torch.no_grad():
        model(input_ids=ids, prompt_mask=prompt_mask)
        by_mask = badit.get_routing_weights(model)
        model(input_ids=ids, labels=ids.masked_fill(prompt_mask, -100))
        by_labels = badit.get_routing_weights(model)
        model(input_ids=ids)
        all_tokens = badit.get_routing_weights(model)
    name = "model.layers.1.mlp.gate_proj"
    torch.testing.assert_close(by_mask[name], by_labels[name])
    assert (by_mask[name] - all_tokens[name]).abs().max() > 1e-4
    with pytest.raises(ValueError, match="prompt_mask has shape \\(2, 5\\)"):
        model(input_ids=ids, prompt_mask=prompt_mask[:, :5])
