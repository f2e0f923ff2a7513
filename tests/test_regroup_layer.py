"""Gradient windows and component permutation on real BaditLinear layers."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from badit.adapter.config import BaditConfig
from badit.adapter.layer import BaditLinear
from badit.regrouping import (
    UnsupportedOptimizerState,
    attach_gradient_tracking,
    permute_components,
    plan_regroup,
    regroup,
)
from badit.regrouping.gradients import gradient_windows

IN, OUT, K, R = 32, 48, 4, 2


def make_layer(seed: int = 0, **config) -> BaditLinear:
    """A BADIT layer (K experts of rank R, dense routing, no dropout) around a random frozen linear."""
    torch.manual_seed(seed)
    base = nn.Linear(IN, OUT, bias=False)
    base.weight.requires_grad_(False)
    # the paper's forward (whole experts gated, raw router input): the expected outputs below are worked for it
    fields = dict(
        r=R, num_experts=K, top_k=K, lora_dropout=0.0, gate="components", router_input="raw", **config
    )
    return BaditLinear(base, "default", BaditConfig(**fields), "proj")


def factors(layer: BaditLinear) -> tuple[nn.Parameter, nn.Parameter]:
    return layer.badit_A["default"], layer.badit_B["default"]


def window_of(layer: BaditLinear) -> torch.Tensor:
    return gradient_windows(layer)["default"].statistics()


def backward(layer: nn.Module, seed: int, scale: float = 1.0) -> None:
    torch.manual_seed(seed)
    x, target = torch.randn(3, 5, IN), torch.randn(3, 5, OUT)
    (scale * (layer(x) - target).pow(2).mean()).backward()


def test_window_counts_each_micro_batch_once_under_gradient_accumulation():
    layer = make_layer()
    assert attach_gradient_tracking(layer) == 1
    assert attach_gradient_tracking(layer) == 1  # idempotent: no second hook
    lora_A, lora_B = factors(layer)
    for micro_batch in range(3):  # accumulate without zero_grad, like gradient accumulation
        backward(layer, seed=micro_batch)
    # .grad holds g1 + g2 + g3; a window that read .grad after each micro-batch would hold 3g1 + 2g2 + g3.
    expected = torch.cat([lora_A.grad, lora_B.grad.T], dim=1)
    torch.testing.assert_close(window_of(layer), expected, rtol=1e-6, atol=1e-7)
    assert gradient_windows(layer)["default"].backward_passes == 3


def test_non_finite_gradients_are_ignored():
    layer = make_layer()
    attach_gradient_tracking(layer)
    backward(layer, seed=0)
    before = window_of(layer).clone()
    backward(layer, seed=1, scale=float("inf"))  # what an fp16 overflow looks like: a skipped step
    assert factors(layer)[0].grad.isfinite().all().item() is False
    torch.testing.assert_close(window_of(layer), before, rtol=0, atol=0)


def test_mixed_precision_windows_hold_float32_gradients():
    layer = make_layer()
    attach_gradient_tracking(layer)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # AMP: float32 parameters, bf16 compute
        backward(layer, seed=0)
    lora_A, lora_B = factors(layer)
    torch.testing.assert_close(window_of(layer), torch.cat([lora_A.grad, lora_B.grad.T], dim=1))

    half = make_layer().to(torch.bfloat16)  # a bf16 adapter: the window still accumulates in float32
    attach_gradient_tracking(half)
    for seed in range(2):
        torch.manual_seed(seed)
        x, target = torch.randn(3, 5, IN, dtype=torch.bfloat16), torch.randn(3, 5, OUT, dtype=torch.bfloat16)
        (half(x) - target).pow(2).mean().backward()
    assert window_of(half).dtype == torch.float32
    lora_A, lora_B = factors(half)
    torch.testing.assert_close(
        window_of(half), torch.cat([lora_A.grad, lora_B.grad.T], dim=1).float(), rtol=2e-2, atol=1e-3
    )


def test_exponential_moving_average_window():
    layer = make_layer()
    attach_gradient_tracking(layer, ema=0.75)
    lora_A, lora_B = factors(layer)
    grads = []
    for step in range(2):
        layer.zero_grad()
        backward(layer, seed=step)
        grads.append(torch.cat([lora_A.grad, lora_B.grad.T], dim=1))
    # Starts at zero: 0.75 * (0.25 * g1) + 0.25 * g2
    torch.testing.assert_close(window_of(layer), 0.75 * 0.25 * grads[0] + 0.25 * grads[1])


@pytest.mark.parametrize("ema", [0.0, 1.0, -0.5])
def test_window_refuses_a_decay_outside_0_1_like_the_configs(ema):
    # 0 would keep only the last micro-batch; BaditConfig and the run config refuse it too.
    layer = make_layer()
    with pytest.raises(ValueError, match=r"regroup_ema must be None or a decay in \(0, 1\)"):
        attach_gradient_tracking(layer, ema=ema)
    with pytest.raises(ValueError, match="regroup_ema"):
        BaditConfig(regroup_ema=ema)


def trained_layer_and_optimizer(seed: int = 0) -> tuple[BaditLinear, torch.optim.Optimizer]:
    """A tracked layer after three AdamW steps with a trained router, gradients left in .grad."""
    layer = make_layer(seed)
    attach_gradient_tracking(layer)
    optimizer = torch.optim.AdamW([p for p in layer.parameters() if p.requires_grad], lr=1e-2)
    for step in range(3):
        optimizer.zero_grad()
        backward(layer, seed=10 + step)
        optimizer.step()
    backward(layer, seed=20)  # a pending gradient, which must move too
    return layer, optimizer


def test_permutation_moves_weights_initial_factors_grads_and_adam_moments():
    layer, optimizer = trained_layer_and_optimizer()
    lora_A, lora_B = factors(layer)
    perm = torch.randperm(K * R, generator=torch.Generator().manual_seed(0))
    rows = {  # everything indexed by component, as (tensor, component dim)
        "A": (lora_A, 0),
        "B": (lora_B, 1),
        "A0": (layer.badit_A0["default"], 0),
        "B0": (layer.badit_B0["default"], 1),
        "A.grad": (lora_A.grad, 0),
        "B.grad": (lora_B.grad, 1),
        **{f"A.{k}": (optimizer.state[lora_A][k], 0) for k in ("exp_avg", "exp_avg_sq")},
        **{f"B.{k}": (optimizer.state[lora_B][k], 1) for k in ("exp_avg", "exp_avg_sq")},
    }
    rows["window"] = (window_of(layer), 0)
    before = {name: t.clone() for name, (t, _) in rows.items()}
    steps = optimizer.state[lora_A]["step"].clone()
    permute_components(layer, "default", perm, optimizer)
    for name, (tensor, dim) in rows.items():
        expected = before[name].index_select(dim, perm)
        assert torch.equal(tensor, expected), name
        assert not torch.equal(tensor, before[name]), name  # the permutation did move something
    assert torch.equal(optimizer.state[lora_A]["step"], steps)
    # A0 and B0 move together: the residual's complement scaling * B0 @ A0 is unchanged.
    torch.testing.assert_close(
        layer.badit_B0["default"] @ layer.badit_A0["default"],
        before["B0"] @ before["A0"],
        rtol=1e-5,
        atol=1e-5,
    )


def plant_window(layer: BaditLinear, seed: int) -> np.ndarray:
    """Fill the layer's gradient window with clustered directions; returns the planted group of each component."""
    rng = np.random.default_rng(seed)
    planted = rng.permutation(np.repeat(np.arange(K), R))
    centers = rng.standard_normal((K, IN + OUT))
    signal = centers[planted] + 0.3 * rng.standard_normal((K * R, IN + OUT))
    gradient_windows(layer)["default"].buffer = torch.tensor(signal, dtype=torch.float32)
    return planted


def applied_permutation(a0_before: torch.Tensor, a0_after: torch.Tensor) -> np.ndarray:
    """perm with new component j = old component perm[j], read off the (distinct) rows of A0."""
    matches = (a0_after[:, None, :] == a0_before[None, :, :]).all(dim=2)  # (new, old)
    assert (matches.sum(dim=1) == 1).all()
    return matches.float().argmax(dim=1).numpy()


def test_regroup_with_trained_routing_gives_each_moved_component_its_new_experts_weight():
    layer, optimizer = trained_layer_and_optimizer()
    with torch.no_grad():
        layer.badit_router["default"].weight.normal_(0, 1.0)  # clearly non-uniform routing
    planted = plant_window(layer, seed=1)
    lora_A, lora_B = factors(layer)
    a0_before = layer.badit_A0["default"].clone()
    x = torch.randn(3, 5, IN, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        before = layer(x)
        state = layer.badit_state["default"]
        gate = state.routing_weights  # (batch, K): the router is not touched by a regroup
        # scaling * (x . a_j) b_j of every old rank-1 component j, before its gate: (K*R, batch, seq, out)
        contributions = state.scaling * torch.einsum("bsi,ji,oj->jbso", x, lora_A, lora_B)
        base = layer.base_layer(x)
    assert (gate.max(dim=1).values - gate.min(dim=1).values > 0.1).all()

    (stats,) = regroup(layer, optimizer).values()

    perm = applied_permutation(a0_before, layer.badit_A0["default"])
    assert np.array_equal(np.sort(perm), np.arange(K * R))
    new_expert = np.empty(K * R, dtype=np.int64)
    new_expert[perm] = np.arange(K * R) // R  # expert of each old component after the regroup
    assert {frozenset(np.flatnonzero(new_expert == e)) for e in range(K)} == {
        frozenset(np.flatnonzero(planted == g)) for g in range(K)
    }  # planted clusters recovered
    moved = new_expert != np.arange(K * R) // R
    assert stats["moved"] == moved.sum() > 0
    # By hand: every old component j now contributes with the gate of its new expert.
    expected = base + torch.einsum("bj,jbso->bso", gate[:, new_expert], contributions)
    with torch.no_grad():
        after = layer(x)
    torch.testing.assert_close(after, expected, rtol=1e-5, atol=1e-5)
    assert (after - before).abs().max() > 1e-2  # non-uniform routing: moving components changes the output
    assert window_of(layer).abs().max() == 0  # a new window starts


def test_regroup_with_uniform_routing_preserves_the_output():
    layer, optimizer = trained_layer_and_optimizer()
    with torch.no_grad():
        layer.badit_router["default"].weight.zero_()  # equal mixing weights
    plant_window(layer, seed=2)
    x = torch.randn(3, 5, IN, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        before = layer(x)
    (stats,) = regroup(layer, optimizer).values()
    assert stats["moved"] > 0
    with torch.no_grad():
        torch.testing.assert_close(layer(x), before, rtol=0, atol=1e-5)


def test_regroup_without_gradients_changes_nothing():
    layer, optimizer = trained_layer_and_optimizer()
    gradient_windows(layer)["default"].reset()
    a_before = factors(layer)[0].clone()
    assert regroup(layer, optimizer) == {}
    assert torch.equal(factors(layer)[0], a_before)


def test_deepcopy_tracks_its_own_gradients():
    layer = make_layer()
    attach_gradient_tracking(layer)
    clone = copy.deepcopy(layer)
    backward(clone, seed=0)
    assert window_of(clone).abs().max() > 0
    assert window_of(layer).abs().max() == 0


def test_frozen_adapter_is_not_tracked():
    layer = make_layer()
    factors(layer)[0].requires_grad_(False)
    assert attach_gradient_tracking(layer) == 0


def test_sharded_parameters_are_refused():
    layer, optimizer = trained_layer_and_optimizer()
    factors(layer)[0].ds_id = 3  # what DeepSpeed ZeRO-3 attaches to partitioned parameters
    with pytest.raises(RuntimeError, match="ZeRO-3.*ZeRO-1/2|ZeRO-3.*DistributedDataParallel"):
        regroup(layer, optimizer)


def test_factored_optimizer_state_is_refused_not_corrupted():
    layer = make_layer()
    attach_gradient_tracking(layer)
    optimizer = torch.optim.Adafactor([p for p in layer.parameters() if p.requires_grad], lr=1e-2)
    backward(layer, seed=0)
    optimizer.step()
    plant_window(layer, seed=3)
    with pytest.raises(UnsupportedOptimizerState, match="Adafactor"):
        regroup(layer, optimizer)


def test_flipping_component_signs_leaves_the_experts_unchanged():
    """(a_j, b_j) -> (-a_j, -b_j) is the same function with the negated gradient row; with components 1
    and 3 of a 6-component layer (3 experts of rank 2) flipped, regroup() forms the same experts. The
    published signed cosine (regroup_similarity="signed") does not: on this layer its experts change."""

    def six_components(flip: list[int]) -> BaditLinear:
        torch.manual_seed(0)
        base = nn.Linear(IN, OUT, bias=False)
        base.weight.requires_grad_(False)
        layer = BaditLinear(
            base, "default", BaditConfig(r=2, num_experts=3, top_k=3, lora_dropout=0.0), "proj"
        )
        with torch.no_grad():  # the component's initial factors too: gate="delta" reads B - B0, A - A0
            for a, b in (factors(layer), (layer.badit_A0["default"], layer.badit_B0["default"])):
                a[flip] *= -1
                b[:, flip] *= -1
        attach_gradient_tracking(layer)
        backward(layer, seed=0)
        return layer

    def experts_of(perm) -> set[frozenset[int]]:
        return {frozenset(perm[e * 2 : (e + 1) * 2].tolist()) for e in range(3)}

    plain, flipped = six_components([]), six_components([1, 3])
    windows = [window_of(layer).double().numpy().copy() for layer in (plain, flipped)]
    np.testing.assert_array_equal(windows[1][[1, 3]], -windows[0][[1, 3]])  # the negated rows
    np.testing.assert_array_equal(windows[1][[0, 2, 4, 5]], windows[0][[0, 2, 4, 5]])
    signed = [experts_of(plan_regroup(w, 3, 2, signed=True).perm) for w in windows]
    assert signed[0] != signed[1]  # the published cosine: the SVD's sign convention picks the experts

    original = factors(plain)[0].detach().abs().clone()
    found = []
    for layer in (plain, flipped):
        assert regroup(layer)  # BaditConfig's default: regroup_similarity="sign_invariant"
        rows = factors(layer)[0].detach().abs()  # new row j = old row perm[j], up to its sign
        perm = np.array([int(torch.cdist(row[None], original).argmin()) for row in rows])
        assert sorted(perm) == list(range(6))
        found.append(experts_of(perm))
    assert found[0] == found[1]
    assert found[0] == experts_of(plan_regroup(windows[0], 3, 2).perm)
