"""Several adapters on one model, mixed batches (`adapter_names`), the routing fallback, plain nn.Modules."""

import pytest
import torch
from peft import PeftModel, get_peft_model
from torch import nn

import badit
from badit.adapter.layer import BaditLinear
from badit.adapter.routing import RoutingState
from tests.conftest import make_tiny_model

TOL = 1e-5


def config(**overrides) -> badit.BaditConfig:
    # gate="components": the merged deltas below are worked for it (gate="delta": tests/test_routing_switches.py)
    fields = dict(
        r=2, num_experts=3, regroup=False, lora_dropout=0.0, task_type="CAUSAL_LM", gate="components"
    )
    return badit.BaditConfig(**{**fields, **overrides})


def batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, 128, (3, 10), generator=g)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :3] = 0  # left padding on the second sequence
    return {"input_ids": input_ids, "attention_mask": attention_mask}


@torch.no_grad()
def logits(model, inputs=None, **kwargs) -> torch.Tensor:
    return model(**(inputs or batch()), **kwargs).logits


def assert_within_tol(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert (actual - expected).abs().max() <= TOL


def assert_active_and_base(model, active: torch.Tensor, pretrained: torch.Tensor) -> None:
    """The model's logits are ``active`` with its active adapter, ``pretrained`` with adapters disabled."""
    assert_within_tol(logits(model), active)
    with model.disable_adapter():
        assert_within_tol(logits(model), pretrained)


@torch.no_grad()
def perturb(model, adapter_name: str, seed: int) -> None:
    """Move one adapter's experts and router away from their initial values, as training would."""
    g = torch.Generator().manual_seed(seed)
    for layer in (m for m in model.modules() if isinstance(m, BaditLinear)):
        for p in (layer.badit_A[adapter_name], layer.badit_B[adapter_name]):
            p.add_(0.3 * p.std() * torch.randn(p.shape, generator=g))
        layer.badit_router[adapter_name].weight.normal_(0, 1, generator=g)


@pytest.fixture
def two_adapters():
    """A llama with adapters "default" (trained) and "other" (trained, different r and K), and the logits of
    the pretrained model and of "default" alone (measured before "other" existed)."""
    pretrained = logits(make_tiny_model("llama"))
    model = get_peft_model(make_tiny_model("llama"), config()).eval()
    perturb(model, "default", seed=1)
    default_alone = logits(model)
    model.add_adapter("other", config(r=1, num_experts=4))
    perturb(model, "other", seed=2)
    return model, pretrained, default_alone


def test_second_adapter_leaves_the_first_and_the_base_exact(two_adapters):
    model, pretrained, default_alone = two_adapters
    model.set_adapter("default")
    assert_active_and_base(model, default_alone, pretrained)
    model.set_adapter("other")
    other = logits(model)
    assert (other - default_alone).abs().max() > 1e-2  # the adapters really differ
    assert (other - pretrained).abs().max() > 1e-2


def test_each_adapter_equals_itself_alone_after_save_and_load(two_adapters, tmp_path):
    model, pretrained, default_alone = two_adapters
    model.set_adapter("other")
    other_with_both = logits(model)
    model.save_pretrained(tmp_path)  # "default" at the root, "other" in tmp_path / "other"
    assert (tmp_path / "other" / "adapter_model.safetensors").is_file()

    only_other = PeftModel.from_pretrained(make_tiny_model("llama"), tmp_path / "other").eval()
    assert_within_tol(logits(only_other), other_with_both)

    loaded = PeftModel.from_pretrained(make_tiny_model("llama"), tmp_path).eval()
    loaded.load_adapter(tmp_path / "other", adapter_name="other")
    assert_within_tol(logits(loaded), default_alone)
    loaded.set_adapter("other")
    assert_active_and_base(loaded, other_with_both, pretrained)


def test_deleting_an_adapter_restores_the_rest(two_adapters):
    model, pretrained, default_alone = two_adapters
    model.delete_adapter("other")
    model.set_adapter("default")
    assert_active_and_base(model, default_alone, pretrained)
    # Unloading gives back the pretrained weights themselves.
    assert_within_tol(logits(model.unload()), pretrained)


def test_deleting_the_first_adapter_keeps_the_second(two_adapters):
    model, pretrained, _ = two_adapters
    model.set_adapter("other")
    other = logits(model)
    model.delete_adapter("default")
    assert_active_and_base(model, other, pretrained)


def test_mixed_batch_gives_each_sequence_its_adapter(two_adapters):
    model, pretrained, default_alone = two_adapters
    model.set_adapter("other")
    other = logits(model)
    model.set_adapter("default")
    mixed = logits(model, adapter_names=["other", "__base__", "default"])
    assert_within_tol(mixed[0], other[0])
    assert_within_tol(mixed[1], pretrained[1])
    assert_within_tol(mixed[2], default_alone[2])
    # The active adapter is untouched afterwards.
    assert_within_tol(logits(model), default_alone)


def test_mixed_batch_rejects_unknown_names_and_training_mode(two_adapters):
    model, _, _ = two_adapters
    with pytest.raises(ValueError, match="non-existing adapter.*typo"):
        logits(model, adapter_names=["default", "typo", "other"])
    model.train()
    with pytest.raises(ValueError, match="training mode"):
        logits(model, adapter_names=["default", "default", "other"])


def test_mixed_batch_generate_matches_one_adapter_at_a_time(two_adapters):
    model, _, _ = two_adapters
    inputs = batch()
    settings = dict(max_new_tokens=5, min_new_tokens=5, do_sample=False, pad_token_id=0)

    def generate(**kwargs):
        with torch.no_grad():
            return model.generate(**inputs, **settings, **kwargs)

    per_adapter = {}
    for name in ("default", "other"):
        model.set_adapter(name)
        per_adapter[name] = generate()
    with model.disable_adapter():
        per_adapter["__base__"] = generate()
    names = ["__base__", "other", "default"]
    mixed = generate(adapter_names=names)
    for row, name in enumerate(names):
        assert torch.equal(mixed[row], per_adapter[name][row]), name
    assert not torch.equal(per_adapter["other"], per_adapter["default"])
    # Beam search repeats each prompt; each beam keeps its prompt's adapter.
    beams = generate(adapter_names=names, num_beams=2)
    for row, name in enumerate(names):
        if name == "__base__":
            with model.disable_adapter():
                expected = generate(num_beams=2)
        else:
            model.set_adapter(name)
            expected = generate(num_beams=2)
        assert torch.equal(beams[row], expected[row]), name


def test_sequences_without_prompt_tokens_pool_attended_tokens_and_warn_once():
    state = RoutingState()
    input_ids = torch.ones(2, 4, dtype=torch.long)
    attention_mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    labels = torch.tensor([[-100, -100, 5, 6], [5, 6, 7, 8]])  # second sequence: no prompt marked
    with pytest.warns(UserWarning, match="no prompt token marked"):
        state.capture(None, (), {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels})
    # Row 0 keeps its prompt (attended & label -100: position 1); row 1 falls back to its 4 attended tokens.
    assert state.prompt_mask.tolist() == [[False, True, False, False], [True, True, True, True]]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second call does not warn again
        state.capture(None, (), {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels})


def test_router_learns_with_labels_equal_to_input_ids():
    model = get_peft_model(make_tiny_model("llama"), config(lora_dropout=0.05)).train()
    inputs = batch()
    with pytest.warns(UserWarning, match="no prompt token marked"):
        loss = model(**inputs, labels=inputs["input_ids"].clone()).loss
    loss.backward()
    grads = [m.badit_router["default"].weight.grad for m in model.modules() if isinstance(m, BaditLinear)]
    assert len(grads) == 2
    for grad in grads:
        assert grad is not None and grad.abs().max() > 1e-6


class TwoLayerNet(nn.Module):
    """A plain module, no transformers: (batch, 16) -> (batch, 4)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(16, 12)
        self.head = nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.proj(x)))


def test_plain_module_with_default_task_type():
    torch.manual_seed(0)
    net = TwoLayerNet()
    x = torch.randn(5, 16)
    expected = net(x).detach()
    model = get_peft_model(net, badit.BaditConfig(r=2, num_experts=3, target_modules=["proj"], regroup=False))
    assert type(model) is PeftModel
    assert isinstance(model.base_model.model.proj, BaditLinear)
    model.eval()
    with torch.no_grad():
        assert_within_tol(model(x), expected)  # a zero router reproduces the module
        layer = model.base_model.model.proj
        layer.badit_router["default"].weight.normal_(0, 1)
        out = model(x)
    # Each row routes on itself: row 0 alone gives the same output as within the batch.
    with torch.no_grad():
        torch.testing.assert_close(model(x[:1])[0], out[0], atol=TOL, rtol=0)
    assert layer.badit_state["default"].routing_weights.shape == (1, 3)


@torch.no_grad()
def test_the_residual_invariant_holds_through_add_merge_delete_and_unload():
    # One nn.Linear(8, 6), adapters "a" (r=2, K=3) and "b" (r=1, K=2). The base weight must always be
    # W - sum_n s_n B0_n @ A0_n + (merged n: s_n B_n diag(g) A_n); worked term by term below.
    torch.manual_seed(0)
    base = nn.Linear(8, 6, bias=False)
    w = base.weight.detach().double().clone()
    layer = BaditLinear(base, "a", config(), layer_name="lin")
    layer.update_layer("b", config(r=1, num_experts=2))
    for name in ("a", "b"):
        layer.badit_A[name].add_(0.1 * torch.randn_like(layer.badit_A[name]))  # trained: A != A0

    def initial(name):  # s * B0 @ A0
        return layer.badit_state[name].scaling * (
            layer.badit_B0[name].double() @ layer.badit_A0[name].double()
        )

    def merged_delta(name, g):  # s * B diag(g repeated r times) A
        state = layer.badit_state[name]
        gate = (torch.tensor(g, dtype=torch.float64) * state.scaling).repeat_interleave(state.r)
        return layer.badit_B[name].double() @ (gate[:, None] * layer.badit_A[name].double())

    def base_weight():
        return layer.get_base_layer().weight.double()

    close = dict(atol=1e-5, rtol=0)
    torch.testing.assert_close(base_weight(), w - initial("a") - initial("b"), **close)
    torch.testing.assert_close(layer.pretrained_weight().double(), w, **close)
    layer.set_fixed_routing("a", torch.tensor([1.0, 2.0, 0.5]))
    layer.merge(adapter_names=["a"])
    torch.testing.assert_close(
        base_weight(), w - initial("a") - initial("b") + merged_delta("a", [1.0, 2.0, 0.5]), **close
    )
    torch.testing.assert_close(layer.pretrained_weight().double(), w, **close)
    layer.delete_adapter("a")  # while merged: its merge and its initial components both go back
    assert layer.merged_adapters == [] and set(layer.badit_state) == {"b"}
    torch.testing.assert_close(base_weight(), w - initial("b"), **close)
    torch.testing.assert_close(
        layer.unload_and_optionally_merge_module(False, False, None).weight.double(), w, **close
    )
