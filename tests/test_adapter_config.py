"""Bad configurations and unsupported layers are rejected with messages saying what to change."""

import pytest
import torch
from peft import get_peft_model

import badit
from tests.helpers import make_tiny_model


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"r": 0}, "r=0 is not a positive integer; set r"),
        ({"num_experts": 0}, "num_experts=0 is not a positive integer; set num_experts"),
        ({"top_k": 7}, r"top_k=7 is not in \[1, num_experts=6\]; set top_k between 1 and num_experts"),
        ({"top_k": 0}, r"top_k=0 is not in \[1, num_experts=6\]"),
        ({"init": "pissa"}, "init='pissa' is not one of .*use 'svd'"),
        ({"svd_method": "qr"}, "svd_method='qr' is not one of .*use 'randomized'"),
        ({"router_scale": "sum"}, "router_scale='sum' is not one of .*use 'preserve'"),
        ({"lora_dropout": 1.0}, r"lora_dropout=1.0 is not in \[0, 1\)"),
        ({"regroup_every": 0}, "regroup_every=0 is neither 'epoch' nor a positive integer"),
        # the schedule is checked here once; regroup_due (badit.regrouping.schedule) only reads it
        ({"regroup_every": "daily"}, "regroup_every='daily' is neither 'epoch' nor a positive integer"),
        ({"regroup_ema": 1.5}, "regroup_ema=1.5 is not None or a decay"),
        ({"target_modules": []}, "target_modules=\\[\\] is empty"),
    ],
)
def test_bad_config_values_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        badit.BaditConfig(**kwargs)


def test_top_k_defaults_to_dense_routing():
    assert badit.BaditConfig(num_experts=4).top_k == 4
    assert badit.BaditConfig().top_k == 6


def test_no_matching_target_module_is_reported():
    with pytest.raises(ValueError, match="not_a_module"):
        get_peft_model(
            make_tiny_model("llama"), badit.BaditConfig(target_modules=["not_a_module"], regroup=False)
        )


def test_too_many_components_for_a_layer_names_the_layer():
    config = badit.BaditConfig(r=20, num_experts=4, target_modules=["gate_proj"], regroup=False)
    with pytest.raises(
        ValueError, match=r"layer 'model.layers.0.mlp.gate_proj' \(96x64\).*4 \* 20 = 80.*min\(in, out\) = 64"
    ):
        get_peft_model(make_tiny_model("llama"), config)


def test_embedding_target_is_rejected_with_its_name_and_type():
    config = badit.BaditConfig(target_modules=["embed_tokens"], regroup=False)
    with pytest.raises(
        TypeError, match="module 'model.embed_tokens' of type Embedding: only torch.nn.Linear"
    ):
        get_peft_model(make_tiny_model("llama"), config)


def test_fixed_routing_of_the_wrong_shape_is_rejected():
    model = get_peft_model(make_tiny_model("llama"), badit.BaditConfig(regroup=False))
    with pytest.raises(ValueError, match=r"must have shape \(6,\).*got \(4,\)"):
        model.set_fixed_routing(torch.ones(4))
    with pytest.raises(KeyError, match="no BADIT layer named"):
        model.set_fixed_routing({"model.layers.9.mlp.gate_proj": torch.ones(6)})


class QuantLinear(torch.nn.Module):
    """Stands in for a GPTQ / AWQ layer: not an nn.Linear, packed integer weights."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("qweight", torch.zeros(8, 96, dtype=torch.int32))

    def forward(self, x):
        return x.new_zeros(*x.shape[:-1], 96)


def test_other_quantised_layers_get_a_clear_error():
    model = make_tiny_model("llama")
    model.model.layers[0].mlp.gate_proj = QuantLinear()
    with pytest.raises(
        TypeError, match="'model.layers.0.mlp.gate_proj' of type QuantLinear.*bitsandbytes 4-bit"
    ):
        get_peft_model(model, badit.BaditConfig(regroup=False))
