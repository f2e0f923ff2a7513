"""GPT-2's Conv1D projections (weight stored (in, out)) as BADIT targets: init equal to the base, a few
training steps, save / reload equal, and both exports equal to the live adapter under a fixed routing."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel
from transformers.pytorch_utils import Conv1D

import badit
from badit.adapter.export import export_lora, export_merged
from badit.adapter.layer import BaditLinear


def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    """2 layers, width 32: c_attn (32 -> 96), attn c_proj (32 -> 32), c_fc (32 -> 128), mlp c_proj (128 -> 32)."""
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4)
    model = GPT2LMHeadModel(config)
    with torch.no_grad():  # std 0.02 init: scale up so the spectrum is not flat and logits not ~0
        for module in model.modules():
            if isinstance(module, Conv1D):
                module.weight.mul_(5.0)
    return model.float().eval()


def config(**overrides) -> badit.BaditConfig:
    kwargs = dict(r=2, num_experts=3, top_k=3, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear")
    return badit.BaditConfig(**{**kwargs, "task_type": "CAUSAL_LM", **overrides})


INPUTS = torch.tensor([[5, 9, 14, 3, 7, 22, 40, 1], [11, 2, 33, 8, 19, 4, 6, 50]])
LABELS = torch.where(torch.arange(8) < 4, -100, INPUTS)  # the first 4 tokens are the prompt


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=INPUTS).logits


@pytest.mark.slow
def test_gpt2_conv1d_trains_saves_reloads_and_exports(tmp_path):
    base_logits = logits(tiny_gpt2())
    model = get_peft_model(tiny_gpt2(), config())
    # every Conv1D projection of both blocks is adapted (lm_head, an nn.Linear, is left out by all-linear)
    adapted = [name for name, m in model.named_modules() if isinstance(m, BaditLinear)]
    assert len(adapted) == 8 and all(isinstance(model.get_submodule(n).base_layer, Conv1D) for n in adapted)
    # residual + scaling * B0 @ A0 rebuilds W in float32: logits at init equal the base's up to rounding
    assert (logits(model) - base_logits).abs().max() < 1e-5  # measured 2.3e-7
    layer = model.get_submodule(adapted[0])  # c_attn of block 0: weight (32, 96), so in 32, out 96
    assert (layer.in_features, layer.out_features) == (32, 96)
    assert layer.badit_A["default"].shape == (6, 32) and layer.badit_B["default"].shape == (96, 6)

    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        loss = model(input_ids=INPUTS, labels=LABELS).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    stats = badit.regroup(model, optimizer)
    assert len(stats) == 8 and sum(layer["moved"] for layer in stats.values()) > 0  # measured 20 moved
    model.eval()
    trained = logits(model)
    assert (trained - base_logits).abs().max() > 1e-2  # training changed the model
    layers = badit.get_routing_weights(model)
    assert len(layers) == 8

    model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(tiny_gpt2(), tmp_path / "adapter").eval()
    assert (logits(reloaded) - trained).abs().max() < 1e-6  # measured 0

    # exports under a uniform fixed routing equal the live adapter under that same routing
    routing = torch.ones(3)
    export_lora(model, tmp_path / "lora", routing=routing)
    export_merged(model, tmp_path / "merged", routing=routing)
    model.base_model.set_fixed_routing(routing)
    fixed = logits(model)
    lora = PeftModel.from_pretrained(tiny_gpt2(), tmp_path / "lora").eval()
    assert lora.peft_config["default"].fan_in_fan_out is True
    assert (logits(lora) - fixed).abs().max() < 1e-5  # measured 1.9e-7
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert isinstance(merged.transformer.h[0].attn.c_attn, Conv1D)
    assert (logits(merged) - fixed).abs().max() < 1e-5  # measured 1.8e-7
