"""BADIT on a bitsandbytes 4-bit / 8-bit base (CPU): SVD of the dequantised weight, residual stored quantised."""

import pytest
import torch
from peft import get_peft_model

from badit.adapter.export import ExportError, export_merged
from badit.adapter.layer import BaditLinear
from badit.adapter.quantized import dequantized_weight, error_bound
from tests.conftest import make_tiny_model
from tests.test_adapter_multi import batch, config, logits, perturb

bnb = pytest.importorskip("bitsandbytes")


def quantize_gate_projs(model, kind: str):
    """Replace every mlp.gate_proj by its bitsandbytes 4-bit (NF4) or 8-bit version, as a quantised load would."""
    for layer in model.model.layers:
        old = layer.mlp.gate_proj
        if kind == "4bit":
            new = bnb.nn.Linear4bit(
                old.in_features, old.out_features, bias=False, compute_dtype=torch.float32
            )
            new.weight = bnb.nn.Params4bit(old.weight.data.clone(), requires_grad=False, quant_type="nf4")
        else:
            new = bnb.nn.Linear8bitLt(old.in_features, old.out_features, bias=False, has_fp16_weights=False)
            new.weight = bnb.nn.Int8Params(
                old.weight.data.clone(), requires_grad=False, has_fp16_weights=False
            )
        layer.mlp.gate_proj = new.to("cpu")  # .to() quantises
    return model


@pytest.mark.parametrize("kind", ["4bit", "8bit"])
def test_quantised_base_keeps_the_quantised_model_within_the_bound(kind):
    base = quantize_gate_projs(make_tiny_model("llama"), kind)
    quantised_logits = logits(base)
    pretrained = {i: dequantized_weight(layer.mlp.gate_proj) for i, layer in enumerate(base.model.layers)}
    model = get_peft_model(base, config()).eval()
    layers = [m for m in model.modules() if isinstance(m, BaditLinear)]
    assert len(layers) == 2
    for i, layer in enumerate(layers):
        assert layer.quantization == kind
        assert type(layer.get_base_layer().weight).__name__ == (
            "Params4bit" if kind == "4bit" else "Int8Params"
        )
        # The experts come from the dequantised weight: their product is its top-(K*r) part.
        s, b0, a0 = layer.badit_state["default"].scaling, layer.badit_B0["default"], layer.badit_A0["default"]
        top = torch.linalg.svdvals(s * b0 @ a0)[:6]
        torch.testing.assert_close(top, torch.linalg.svdvals(pretrained[i])[:6], atol=1e-3, rtol=1e-4)
        # Residual stored quantised; the initial model differs from W_q by at most R's quantisation error.
        residual = pretrained[i] - s * b0 @ a0
        error = (dequantized_weight(layer.get_base_layer()) - residual).abs()
        assert (error <= error_bound(layer.get_base_layer(), residual) * 1.02 + 1e-6).all()
        assert error.max() > 0  # really quantised
    # At init the model is W_q plus R's quantisation error: logits move, by less than 4-bit's own error.
    full_precision = logits(make_tiny_model("llama"))
    assert (logits(model) - quantised_logits).abs().max() <= (quantised_logits - full_precision).abs().max()


def test_quantised_base_trains_and_exports(tmp_path):
    model = get_peft_model(quantize_gate_projs(make_tiny_model("llama"), "4bit"), config()).train()
    inputs = batch()
    model(**inputs, labels=inputs["input_ids"]).loss.backward()
    layer = next(m for m in model.modules() if isinstance(m, BaditLinear))
    assert layer.badit_A["default"].grad.abs().max() > 0
    model.eval()
    perturb(model, "default", seed=1)
    with pytest.raises(ExportError, match="quantised base .*export --format lora"):
        export_merged(model, tmp_path / "merged", torch.ones(3))
