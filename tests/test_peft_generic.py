"""BADIT through the kinds of generic checks PEFT runs on every method (PEFT's tests/test_custom_models.py
over testing_common.py), written here on small in-file models: save/load, merge/unmerge with a fixed routing,
disable, delete, several adapters, mixed batches, dtypes with and without autocast, the base model's state
dict (the FSDP reload path), training, torch.compile. Each case's model is called with a keyword input
(`model(X=x)`), as PEFT's suite calls it (issue 32's first bug: a KeyError).

What BADIT does not support ends in one error that names it (add_weighted_adapter, non-Linear targets).
"""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel, get_base_model_state_dict, get_peft_model, set_base_model_state_dict
from torch import nn
from transformers.pytorch_utils import Conv1D

import badit
from badit.adapter.layer import BaditLinear
from tests.conftest import make_tiny_model

TOL = 1e-5


class MLP(nn.Module):
    """(batch, 10) -> (batch, 2): two adaptable layers and a head too narrow for K*r = 6 components."""

    def __init__(self) -> None:
        super().__init__()
        self.lin0, self.lin1, self.lin2 = nn.Linear(10, 20), nn.Linear(20, 16), nn.Linear(16, 2)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.lin2(torch.relu(self.lin1(torch.relu(self.lin0(X)))))


class EmbConv1D(nn.Module):
    """Token ids (batch, seq) -> (batch, 2) through an embedding, GPT-2's Conv1D and a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.conv1d = Conv1D(12, 16)  # transformers' (out, in) argument order; weight stored (in, out)
        self.lin0 = nn.Linear(12, 8)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.lin0(torch.relu(self.conv1d(self.emb(X)))).mean(dim=1)


class ConvHead(nn.Module):
    """Images (batch, 3, 6, 6) -> (batch, 8): a Conv2d BADIT cannot adapt, then a Linear it can."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.lin0 = nn.Linear(64, 8)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.lin0(torch.relu(self.conv(X)).flatten(1))


def mlp_input(batch: int = 6) -> torch.Tensor:
    return torch.randn(batch, 10, generator=torch.Generator().manual_seed(1))


def ids_input(batch: int = 6) -> torch.Tensor:
    return torch.randint(0, 50, (batch, 7), generator=torch.Generator().manual_seed(1))


def image_input(batch: int = 6) -> torch.Tensor:
    return torch.randn(batch, 3, 6, 6, generator=torch.Generator().manual_seed(1))


# name: (model class, input maker, target_modules)
CASES = {
    "mlp-lin0": (MLP, mlp_input, ["lin0"]),
    "mlp-lin0-lin1": (MLP, mlp_input, ["lin0", "lin1"]),
    "mlp-regex": (MLP, mlp_input, r"lin[01]"),
    "emb-conv1d": (EmbConv1D, ids_input, ["conv1d", "lin0"]),
    "conv-head": (ConvHead, image_input, ["lin0"]),
}


def make_base(case: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = CASES[case][0]()
    with torch.no_grad():  # a spread-out spectrum, so the top components carry most of each weight
        for p in model.parameters():
            p.mul_(3.0)
    return model.eval()


def config(case: str, **overrides) -> badit.BaditConfig:
    fields = dict(r=2, num_experts=3, target_modules=CASES[case][2], regroup=False, lora_dropout=0.0)
    return badit.BaditConfig(**{**fields, **overrides})


def make_peft(case: str, seed: int = 0, **overrides):
    """(base model, a copy wrapped with a fresh BADIT adapter "default")."""
    base = make_base(case, seed)
    return base, get_peft_model(make_base(case, seed), config(case, **overrides)).eval()


@torch.no_grad()
def perturb(model, adapter_name: str = "default", seed: int = 0) -> None:
    """Move one adapter's experts and router away from their initial values, as training would."""
    g = torch.Generator().manual_seed(seed)
    for layer in layers(model):
        for p in (layer.badit_A[adapter_name], layer.badit_B[adapter_name]):
            p.add_(0.5 * p.float().std() * torch.randn(p.shape, generator=g).to(p))
        weight = layer.badit_router[adapter_name].weight
        weight.copy_(torch.randn(weight.shape, generator=g))


def layers(model) -> list[BaditLinear]:
    return [m for m in model.modules() if isinstance(m, BaditLinear)]


@torch.no_grad()
def out(model, x: torch.Tensor, **kwargs) -> torch.Tensor:
    return model(X=x, **kwargs).float()


def close(a: torch.Tensor, b: torch.Tensor, tol: float = TOL) -> bool:
    return bool((a - b).abs().max() <= tol)


def fix_mean_routing(model, x: torch.Tensor, adapter_name: str = "default") -> None:
    """Fix each layer's routing at its mean mixing weights over x (what `badit export` does per task)."""
    out(model, x)
    routing = {name: w.mean(dim=0) for name, w in badit.get_routing_weights(model, adapter_name).items()}
    model.base_model.set_fixed_routing(routing, adapter_name=adapter_name)


# ---------------------------------------------------------------- forward, save / load


@pytest.mark.parametrize("case", CASES)
def test_a_fresh_adapter_computes_the_base_model_through_a_keyword_input(case):
    # issue 32, bug 1: model(X=x) raised KeyError: 'inputs_embeds' in the routing pre-hook
    base, model = make_peft(case)
    x = CASES[case][1]()
    assert close(out(model, x), out(base, x))
    perturb(model)
    assert not close(out(model, x), out(base, x), 1e-3)  # the check above could fail


@pytest.mark.parametrize("case", CASES)
def test_save_and_load_give_the_same_outputs(case, tmp_path):
    _, model = make_peft(case)
    perturb(model)
    x = CASES[case][1]()
    expected = out(model, x)
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(make_base(case), tmp_path)
    assert close(out(loaded, x), expected)


@pytest.mark.parametrize("case", CASES)
def test_a_fixed_routing_is_saved_and_restored_with_the_adapter(case, tmp_path):
    _, model = make_peft(case)
    perturb(model)
    x = CASES[case][1]()
    fix_mean_routing(model, x)
    fixed = out(model, x)
    model.save_pretrained(tmp_path)
    for low_cpu_mem_usage in (False, True):
        loaded = PeftModel.from_pretrained(make_base(case), tmp_path, low_cpu_mem_usage=low_cpu_mem_usage)
        assert all(layer.fixed_routing("default") is not None for layer in layers(loaded))
        assert close(out(loaded, x), fixed)
    # and the live router again after set_fixed_routing(None): the routing no longer is saved
    model.base_model.set_fixed_routing(None)
    model.save_pretrained(tmp_path / "live")
    live = PeftModel.from_pretrained(make_base(case), tmp_path / "live")
    assert all(layer.fixed_routing("default") is None for layer in layers(live))
    assert close(out(live, x), out(model, x))


def test_fixed_routing_changes_the_output_and_non_finite_routing_is_refused():
    _, model = make_peft("mlp-lin0")
    perturb(model)
    x = mlp_input()
    live = out(model, x)
    fix_mean_routing(model, x)
    assert not close(out(model, x), live, 1e-4)  # rows routed apart before, one mixture now
    with pytest.raises(ValueError, match="non-finite"):
        model.base_model.set_fixed_routing(torch.tensor([1.0, float("nan"), 1.0]))


# ---------------------------------------------------------------- merge, disable, delete


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("safe_merge", [False, True])
def test_merge_unmerge_and_merge_and_unload_with_a_fixed_routing(case, safe_merge):
    base, model = make_peft(case)
    perturb(model)
    x = CASES[case][1]()
    fix_mean_routing(model, x)
    expected = out(model, x)
    model.merge_adapter(safe_merge=safe_merge)
    assert close(out(model, x), expected, 1e-4)
    model.merge_adapter()  # idempotent: a second merge warns and leaves it
    assert close(out(model, x), expected, 1e-4)
    model.unmerge_adapter()
    assert close(out(model, x), expected, 1e-4)
    merged = model.merge_and_unload(safe_merge=safe_merge)
    assert not any(isinstance(m, BaditLinear) for m in merged.modules())
    assert close(out(merged, x), expected, 1e-4)
    assert not close(expected, out(base, x), 1e-3)


@pytest.mark.parametrize("case", CASES)
def test_disable_and_unload_give_back_the_base_model(case):
    base, model = make_peft(case)
    perturb(model)
    x = CASES[case][1]()
    with model.disable_adapter():
        assert close(out(model, x), out(base, x))
    assert not close(out(model, x), out(base, x), 1e-3)
    assert close(out(model.unload(), x), out(base, x))


@pytest.mark.parametrize("case", CASES)
def test_delete_an_adapter_leaves_the_other_exact(case):
    base, model = make_peft(case)
    model.add_adapter("other", config(case, r=1))
    perturb(model, "default", seed=1)
    perturb(model, "other", seed=2)
    x = CASES[case][1]()
    model.set_adapter("other")
    other = out(model, x)
    model.delete_adapter("default")
    assert model.active_adapters == ["other"]
    assert all(
        "default" not in layer.badit_A and "default" not in layer.badit_state for layer in layers(model)
    )
    assert close(out(model, x), other)
    with model.disable_adapter():
        assert close(out(model, x), out(base, x))
    with pytest.raises(ValueError):
        model.delete_adapter("default")


# ---------------------------------------------------------------- several adapters, mixed batches


@pytest.mark.parametrize("case", CASES)
def test_a_mixed_batch_routes_each_row_through_its_own_adapter(case):
    # issue 32, bug 2: 2-D inputs (batch, features) raised "give one name per sequence"
    base, model = make_peft(case)
    model.add_adapter("other", config(case))
    perturb(model, "default", seed=1)
    perturb(model, "other", seed=2)
    x = CASES[case][1]()
    alone = {}
    for name in ("default", "other"):
        model.set_adapter(name)
        alone[name] = out(model, x)
    alone["__base__"] = out(base, x)
    names = ["default", "other", "__base__", "other", "default", "__base__"]
    mixed = out(model, x, adapter_names=names)
    for row, name in enumerate(names):
        assert close(mixed[row], alone[name][row]), (row, name)


@pytest.mark.parametrize("case", CASES)
def test_adapter_names_of_the_wrong_length_raise_pefts_error(case):
    # issue 32, bug 4: 3 names for 6 rows were silently repeated to [a, a, b, b, c, c]
    _, model = make_peft(case)
    x = CASES[case][1]()
    with pytest.raises(ValueError, match=r"Length of `adapter_names` should be the same .* got 3 and 6"):
        out(model, x, adapter_names=["default", "__base__", "default"])


def test_mixed_batches_with_a_merged_adapter_and_unknown_names_raise_pefts_errors():
    _, model = make_peft("mlp-lin0")
    x = mlp_input()
    with pytest.raises(ValueError, match="Trying to infer with non-existing adapter"):
        out(model, x, adapter_names=["nope"] * 6)
    model.base_model.set_fixed_routing(torch.ones(3))
    model.merge_adapter()
    with pytest.raises(ValueError, match="Cannot pass `adapter_names` when there are merged adapters"):
        out(model, x, adapter_names=["default"] * 6)
    model.train()
    with pytest.raises(ValueError, match="training mode"):
        model(X=x, adapter_names=["default"] * 6)


# ---------------------------------------------------------------- dtypes


def adapter_dtypes(model) -> set[torch.dtype]:
    return {p.dtype for n, p in model.named_parameters() if "badit_" in n}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("autocast_adapter_dtype", [True, False])
def test_adapter_dtype_follows_autocast_adapter_dtype(dtype, autocast_adapter_dtype, tmp_path):
    # issue 32: autocast_adapter_dtype=False was ignored (the factors stayed float32)
    expected = torch.float32 if autocast_adapter_dtype else dtype
    case = "emb-conv1d"
    model = get_peft_model(
        make_base(case).to(dtype), config(case), autocast_adapter_dtype=autocast_adapter_dtype
    )
    model.add_adapter("other", config(case), autocast_adapter_dtype=autocast_adapter_dtype)
    assert adapter_dtypes(model) == {expected}
    model.save_pretrained(tmp_path)
    for low_cpu_mem_usage in (False, True):
        loaded = PeftModel.from_pretrained(
            make_base(case).to(dtype),
            tmp_path,
            autocast_adapter_dtype=autocast_adapter_dtype,
            low_cpu_mem_usage=low_cpu_mem_usage,
        )
        loaded.load_adapter(
            tmp_path / "other",
            adapter_name="other",
            autocast_adapter_dtype=autocast_adapter_dtype,
            low_cpu_mem_usage=low_cpu_mem_usage,
        )
        assert adapter_dtypes(loaded) == {expected}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_without_autocast_runs_merges_and_unloads(dtype):
    case = "emb-conv1d"
    base = make_base(case)
    model = get_peft_model(make_base(case).to(dtype), config(case), autocast_adapter_dtype=False)
    x = ids_input()
    reference = out(base, x)
    # at init the adapter computes the base model, to the base dtype's rounding (2^-8 relative for bfloat16)
    assert close(out(model, x), reference, 0.05 * reference.abs().max().item())
    perturb(model)
    fix_mean_routing(model, x)
    expected = out(model, x)
    assert torch.isfinite(expected).all()
    for safe_merge in (False, True):
        model.merge_adapter(safe_merge=safe_merge)
        assert close(out(model, x), expected, 0.05 * expected.abs().max().item())
        model.unmerge_adapter()
    merged = model.merge_and_unload()
    assert close(out(merged, x), expected, 0.05 * expected.abs().max().item())


# ---------------------------------------------------------------- the base model's state dict (FSDP path)


@pytest.mark.parametrize("case", CASES)
def test_get_base_model_state_dict_is_the_pretrained_model(case):
    # issue 32, bug 3: it returned the residual W - s * B0 @ A0 of every adapted layer
    base, model = make_peft(case)
    model.add_adapter("other", config(case))
    perturb(model)
    expected = base.state_dict()
    got = get_base_model_state_dict(model)
    assert sorted(got) == sorted(expected)
    assert all(close(got[k], expected[k]) for k in expected)
    fresh = make_base(case, seed=5)
    fresh.load_state_dict(got)  # loads into the plain model
    x = CASES[case][1]()
    assert close(out(fresh, x), out(base, x))


@pytest.mark.parametrize("case", CASES)
def test_set_base_model_state_dict_keeps_the_adapter_on_the_weights_loaded(case):
    # issue 32, bug 3: set_base_model_state_dict(model, pretrained) made a fresh adapter differ from the
    # base by ~1.45, as the pretrained weight replaced the residual
    base, model = make_peft(case)
    x = CASES[case][1]()
    set_base_model_state_dict(model, base.state_dict())
    assert close(out(model, x), out(base, x))
    # weights of another model: the adapter's components stay what they were, the rest is the new model
    other = make_base(case, seed=7)
    set_base_model_state_dict(model, other.state_dict())
    with model.disable_adapter():
        assert close(out(model, x), out(other, x))
    assert close(get_base_model_state_dict(model)["lin0.weight"], other.state_dict()["lin0.weight"])


@pytest.mark.parametrize("case", CASES)
def test_the_peft_models_own_state_dict_round_trips(case):
    _, model = make_peft(case)
    perturb(model)
    x = CASES[case][1]()
    expected = out(model, x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    _, other = make_peft(case, seed=3)
    other.load_state_dict(state)
    assert close(out(other, x), expected)


# ---------------------------------------------------------------- training


@pytest.mark.parametrize("case", CASES)
def test_training_updates_only_the_adapter(case):
    _, model = make_peft(case)
    model.train()
    x = CASES[case][1]()
    target = torch.randn(out(model, x).shape, generator=torch.Generator().manual_seed(3))
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("badit_" in n for n in trainable)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(20):
        loss = ((model(X=x) - target) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0]
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    assert any(not torch.equal(p, trainable[n]) for n, p in model.named_parameters() if n in trainable)


# ---------------------------------------------------------------- refused with one clear line


def test_add_weighted_adapter_is_refused_naming_what_to_do_instead():
    _, model = make_peft("mlp-lin0")
    model.add_adapter("other", config("mlp-lin0"))
    with pytest.raises(
        NotImplementedError, match="BADIT does not support add_weighted_adapter.*badit export"
    ):
        model.add_weighted_adapter(["default", "other"], [0.5, 0.5], "combined")


def test_targets_badit_cannot_adapt_are_refused_naming_the_module():
    with pytest.raises(TypeError, match="'conv' of type Conv2d"):
        get_peft_model(make_base("conv-head"), config("conv-head", target_modules=["conv"]))
    with pytest.raises(ValueError, match=r"'lin2' \(2x16\) cannot hold num_experts \* r = 3 \* 2 = 6"):
        get_peft_model(make_base("mlp-lin0"), config("mlp-lin0", target_modules=["lin2"]))


# ---------------------------------------------------------------- torch.compile


def test_the_forward_compiles_without_graph_breaks():
    # issue 32: bool(empty.any()) in the routing pre-hook broke the graph twice
    torch._dynamo.reset()
    model = get_peft_model(make_tiny_model("llama"), badit.BaditConfig(r=2, num_experts=3, regroup=False))
    model.eval()
    ids = torch.randint(3, 128, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    labels = ids.masked_fill(torch.arange(9) < 5, -100)
    explanation = torch._dynamo.explain(model)(
        input_ids=ids, attention_mask=mask, labels=labels, use_cache=False
    )
    assert explanation.graph_break_count == 0, explanation.break_reasons
