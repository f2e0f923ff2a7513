"""Save / load round trip, the residual rebuilt on load, disable_adapter, unload and merging."""

import pytest
import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file

import badit
from badit.adapter.layer import BaditLinear, same_components
from tests.helpers import make_tiny_model


def input_batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, 128, (3, 12), generator=g)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :4] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


@torch.no_grad()
def logits(model, batch) -> torch.Tensor:
    return model(**batch).logits


@torch.no_grad()
def simulate_training(model, seed: int = 0) -> None:
    """Move every trainable tensor (experts and router) and permute components like a regroup would."""
    g = torch.Generator().manual_seed(seed)
    for _, p in model.named_parameters():
        if p.requires_grad:
            p.add_(0.3 * torch.randn(p.shape, generator=g) * p.std().clamp_min(0.1))
    for layer in (m for m in model.modules() if isinstance(m, BaditLinear)):
        perm = torch.randperm(layer.badit_A["default"].shape[0], generator=g)
        for name in ("badit_A", "badit_A0"):
            getattr(layer, name)["default"].data = getattr(layer, name)["default"].data[perm]
        for name in ("badit_B", "badit_B0"):
            getattr(layer, name)["default"].data = getattr(layer, name)["default"].data[:, perm]


@pytest.fixture
def trained(family, tmp_path):
    model = get_peft_model(make_tiny_model(family), badit.BaditConfig(regroup=False)).eval()
    simulate_training(model)
    model.save_pretrained(tmp_path)
    return model, tmp_path


@pytest.mark.parametrize("low_cpu_mem_usage", [False, True])
def test_round_trip_reproduces_trained_logits(family, trained, low_cpu_mem_usage):
    model, directory = trained
    batch = input_batch()
    expected = logits(model, batch)
    torch.manual_seed(1234)  # the randomized SVD run at load differs from the one at training time
    loaded = PeftModel.from_pretrained(
        make_tiny_model(family), directory, low_cpu_mem_usage=low_cpu_mem_usage
    )
    assert (logits(loaded.eval(), batch) - expected).abs().max() <= 1e-5
    for before, after in zip(
        (m for m in model.modules() if isinstance(m, BaditLinear)),
        (m for m in loaded.modules() if isinstance(m, BaditLinear)),
        strict=True,
    ):
        torch.testing.assert_close(
            after.get_base_layer().weight, before.get_base_layer().weight, atol=1e-6, rtol=0
        )
        torch.testing.assert_close(
            after.badit_router["default"].weight, before.badit_router["default"].weight
        )


def test_checkpoint_holds_experts_router_and_initial_factors_only(trained):
    _, directory = trained
    keys = set(load_file(directory / "adapter_model.safetensors"))
    suffixes = {k.rsplit(".gate_proj.", 1)[1] for k in keys}
    # the router input's running moments: router_input="standardized" (the default)
    assert suffixes == {
        "badit_A",
        "badit_B",
        "badit_A0",
        "badit_B0",
        "badit_router.weight",
        "badit_router_moments",
    }
    assert len(keys) == 2 * 6  # two layers
    assert '"peft_type": "BADIT"' in (directory / "adapter_config.json").read_text()


def test_rebuilding_the_residual_matters(family, trained):
    # Without the rebuild (loading the state dict into an unrelated layer state), logits would differ: check
    # that the saved initial factors really differ from a fresh SVD, so the round-trip test is not vacuous.
    model, directory = trained
    fresh = get_peft_model(make_tiny_model(family), badit.BaditConfig(regroup=False))
    layer = next(m for m in fresh.modules() if isinstance(m, BaditLinear))
    saved = load_file(directory / "adapter_model.safetensors")
    saved_a0 = saved["base_model.model.model.layers.0.mlp.gate_proj.badit_A0"]
    assert (saved_a0 - layer.badit_A0["default"]).abs().max() > 1e-2


def test_disable_adapter_and_unload_give_the_pretrained_model(family, trained):
    model, _ = trained
    batch = input_batch()
    original = make_tiny_model(family)
    reference = logits(original, batch)
    with model.disable_adapter():
        assert (logits(model, batch) - reference).abs().max() <= 1e-5
    assert (logits(model, batch) - reference).abs().max() > 1e-2  # the adapter is back on
    unloaded = model.unload()
    assert not any(isinstance(m, BaditLinear) for m in unloaded.modules())
    for mine, theirs in zip(unloaded.model.layers, original.model.layers, strict=True):
        torch.testing.assert_close(mine.mlp.gate_proj.weight, theirs.mlp.gate_proj.weight, atol=1e-6, rtol=0)


def test_merge_needs_a_fixed_routing(family, trained):
    model, _ = trained
    with pytest.raises(ValueError, match="depend on each input sequence.*set_fixed_routing"):
        model.merge_and_unload()
    batch = input_batch()
    model(**batch)
    per_layer = {name: weights.mean(dim=0) for name, weights in badit.get_routing_weights(model).items()}
    model.set_fixed_routing(per_layer)
    fixed = logits(model, batch)
    for name, weights in badit.get_routing_weights(model).items():
        torch.testing.assert_close(weights, per_layer[name].expand(3, -1))
    merged = model.merge_and_unload()
    assert not any(isinstance(m, BaditLinear) for m in merged.modules())
    assert (logits(merged, batch) - fixed).abs().max() <= 1e-4


def test_same_components_ignores_order_but_not_pairing():
    # Components of A0 (2, 2) and B0 (1, 2): (row [1, 2], column [5]) and (row [3, 4], column [6]).
    a0, b0 = torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[5.0, 6.0]])
    assert same_components((a0, b0), (a0.flip(0), b0.flip(1)))  # both components swapped: the same set
    assert not same_components((a0, b0), (a0, b0.flip(1)))  # [1, 2] now pairs with [6]: another set
    assert not same_components((a0, b0), (a0 + 1e-7, b0))  # exact comparison, no tolerance


def test_loading_regrouped_factors_keeps_the_residual_bitwise(family, trained):
    # Resuming after a regroup loads A0 / B0 permuted: rebuilding the residual from them would sum the
    # components in another order (within 3e-8, not bitwise); the same set keeps the residual as it is.
    model, directory = trained
    loaded = PeftModel.from_pretrained(make_tiny_model(family), directory)  # the same SVD as `trained`
    pairs = zip(
        (m for m in model.modules() if isinstance(m, BaditLinear)),
        (m for m in loaded.modules() if isinstance(m, BaditLinear)),
        strict=True,
    )
    for before, after in pairs:
        assert torch.equal(after.get_base_layer().weight, before.get_base_layer().weight)
        assert torch.equal(after.badit_A0["default"], before.badit_A0["default"])
