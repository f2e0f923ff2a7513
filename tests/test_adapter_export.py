"""Export: a BADIT adapter under fixed routing as a plain PEFT LoRA folder (loaded without badit) or a merged model."""

import json
import subprocess
import sys

import pytest
import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from badit.adapter.export import ExportError, badit_layers, export_lora, export_merged, mean_routing
from tests.conftest import make_tiny_model
from tests.test_adapter_multi import batch, config, logits, perturb

TOL = 1e-5

# Runs in a fresh interpreter: loads the base folder and the LoRA folder with plain transformers + peft.
LOADER = """
import sys
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

base_dir, lora_dir, inputs_file, out_file = sys.argv[1:5]
model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), lora_dir).eval()
inputs = load_file(inputs_file)
with torch.no_grad():
    out = model(**inputs).logits
assert not any(name == "badit" or name.startswith("badit.") for name in sys.modules), "badit was imported"
save_file({"logits": out.contiguous()}, out_file)
"""


@pytest.fixture
def trained():
    model = get_peft_model(make_tiny_model("llama"), config()).eval()
    perturb(model, "default", seed=1)
    return model


def fixed_routing_logits(model, routing) -> torch.Tensor:
    model.base_model.set_fixed_routing(routing)
    try:
        return logits(model)
    finally:
        model.base_model.set_fixed_routing(None)


@pytest.mark.slow  # a fresh interpreter imports torch, transformers and peft
def test_exported_lora_loads_without_badit_and_matches(trained, tmp_path):
    routing = torch.tensor([2.0, 0.5, 0.5])  # K = 3, scale "preserve": weights sum to K
    expected = fixed_routing_logits(trained, routing)
    assert (expected - logits(trained)).abs().max() > 1e-3  # the router's routing differs from the fixed one
    make_tiny_model("llama").save_pretrained(tmp_path / "base")
    export_lora(trained, tmp_path / "lora", routing)

    lora_config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert lora_config["peft_type"] == "LORA"
    assert (lora_config["r"], lora_config["lora_alpha"]) == (12, 12 * 32 / 2)  # 2*K*r = 12, scaling 32/2
    weights = load_file(tmp_path / "lora" / "adapter_model.safetensors")
    assert weights["base_model.model.model.layers.0.mlp.gate_proj.lora_A.weight"].shape == (12, 64)
    assert weights["base_model.model.model.layers.0.mlp.gate_proj.lora_B.weight"].shape == (96, 12)

    save_file(batch(), tmp_path / "inputs.safetensors")
    script = tmp_path / "load_lora.py"
    script.write_text(LOADER)
    args = [
        tmp_path / "base",
        tmp_path / "lora",
        tmp_path / "inputs.safetensors",
        tmp_path / "out.safetensors",
    ]
    done = subprocess.run(
        [sys.executable, str(script), *map(str, args)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (load_file(tmp_path / "out.safetensors")["logits"] - expected).abs().max() <= TOL


def test_per_layer_routing_and_uniform_default(trained, tmp_path):
    layers = sorted(badit_layers(trained))
    assert layers == ["model.layers.0.mlp.gate_proj", "model.layers.1.mlp.gate_proj"]
    per_layer = {layers[0]: torch.tensor([0.0, 3.0, 0.0]), layers[1]: torch.tensor([1.0, 1.0, 1.0])}
    expected = fixed_routing_logits(trained, per_layer)
    export_lora(trained, tmp_path / "lora", per_layer)
    loaded = PeftModel.from_pretrained(make_tiny_model("llama"), tmp_path / "lora").eval()
    assert (logits(loaded) - expected).abs().max() <= TOL

    uniform = fixed_routing_logits(trained, torch.ones(3))  # "preserve": uniform = K * 1/K = 1 each
    export_lora(trained, tmp_path / "lora", None)  # replaces the earlier export
    loaded = PeftModel.from_pretrained(make_tiny_model("llama"), tmp_path / "lora").eval()
    assert (logits(loaded) - uniform).abs().max() <= TOL


def test_merged_export_loads_with_transformers_and_matches(trained, tmp_path):
    routing = torch.tensor([0.2, 1.3, 1.5])
    expected = fixed_routing_logits(trained, routing)
    before = logits(trained)
    export_merged(trained, tmp_path / "merged", routing)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert (logits(merged) - expected).abs().max() <= TOL
    assert (logits(trained) - before).abs().max() == 0  # the model in memory is unchanged


def test_export_rejects_a_wrong_routing_size(trained, tmp_path):
    with pytest.raises(ExportError, match="has 3 experts but the routing has shape \\(4,\\)"):
        export_lora(trained, tmp_path / "lora", torch.ones(4))
    assert not (tmp_path / "lora").exists()


def test_mean_routing_averages_every_sequence(trained):
    inputs = batch()
    halves = [{k: v[:2] for k, v in inputs.items()}, {k: v[2:] for k, v in inputs.items()}]
    logits(trained, inputs)
    per_sequence = {
        k: s.routing_weights.clone()
        for k, s in badit_layers(trained)["model.layers.0.mlp.gate_proj"].badit_state.items()
    }
    means = mean_routing(trained, halves)
    assert sorted(means) == ["model.layers.0.mlp.gate_proj", "model.layers.1.mlp.gate_proj"]
    # 3 sequences in two batches (2 + 1): the mean over all 3 rows, whatever the batching.
    torch.testing.assert_close(means["model.layers.0.mlp.gate_proj"], per_sequence["default"].mean(dim=0))
    assert means["model.layers.0.mlp.gate_proj"].sum().item() == pytest.approx(3.0)  # "preserve": sums to K


def test_mean_routing_of_a_zero_router_is_uniform():
    model = get_peft_model(make_tiny_model("llama"), config()).eval()
    # Zero router: softmax of equal logits = 1/3 each, times K = 3 ("preserve") = 1 per expert.
    for weights in mean_routing(model, [batch()]).values():
        torch.testing.assert_close(weights, torch.ones(3))


def test_routing_distance_is_zero_for_the_prompts_own_routing_and_restores_the_model(trained):
    from badit import get_routing_weights
    from badit.adapter.export import routing_distance

    one = {key: value[:1] for key, value in batch().items()}  # a single right-padded (unpadded) prompt
    one["prompt_mask"] = one["attention_mask"].bool()
    live = logits(trained, one)
    own = {name: weights[0] for name, weights in get_routing_weights(trained).items()}  # (K,) per layer
    # the fixed routing equal to what the router gave this prompt: same computation, distance 0
    same = routing_distance(trained, [one], own)
    assert same["prompts"] == 1 and same["max_abs_logit"] < 1e-5 and same["argmax_agreement"] == 1.0
    # uniform routing: the largest next-token difference is the one computed here by hand
    uniform = routing_distance(trained, [one])
    expected = (fixed_routing_logits(trained, torch.ones(3))[0, -1] - live[0, -1]).abs().max()
    assert uniform["max_abs_logit"] == pytest.approx(float(expected), abs=1e-5) and expected > 1e-3
    assert uniform["mean_max_abs_logit"] == pytest.approx(uniform["max_abs_logit"])  # one prompt
    # the model routes live again afterwards
    assert torch.equal(logits(trained, one), live)
