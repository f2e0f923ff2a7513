"""The routing switches of issue 29: gating only the learned delta (gate="delta") and oracle routing by
task id (routing="task"); expected values worked by hand on small layers."""

import pytest
import torch
from peft import PeftModel, get_peft_model
from torch import nn

import badit
from badit.adapter.layer import BaditLinear
from badit.adapter.routing import RoutingState, gate_delta_coefficients, task_mixing_weights
from tests.helpers import make_tiny_model


class OneLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3, bias=False)

    def forward(self, x):
        return self.lin(x)


def _one_layer(gate: str, **kw) -> tuple[nn.Module, BaditLinear]:
    torch.manual_seed(0)
    base = OneLinear()
    with (
        torch.no_grad()
    ):  # singular values 4, 3, 2 on the standard basis: W = [[4,0,0,0],[0,3,0,0],[0,0,2,0]]
        base.lin.weight.copy_(torch.tensor([[4.0, 0, 0, 0], [0, 3.0, 0, 0], [0, 0, 2.0, 0]]))
    config = badit.BaditConfig(
        r=1,
        num_experts=2,
        lora_alpha=1,
        lora_dropout=0.0,
        target_modules=["lin"],
        svd_method="exact",
        regroup=False,
        gate=gate,
        **kw,
    )
    model = get_peft_model(base, config)
    return model, next(m for m in model.modules() if isinstance(m, BaditLinear))


def test_gate_delta_coefficients_are_one_minus_the_gate():
    gate = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    torch.testing.assert_close(gate_delta_coefficients(gate), torch.tensor([[-1.0, 1.0], [0.0, 0.0]]))


def test_task_mixing_weights_look_up_each_sequences_task():
    logits = torch.tensor([[0.0, 0.0], [torch.log(torch.tensor(3.0)), 0.0]])
    # task 0: uniform, times K = 2 -> [1, 1]; task 1: softmax(log 3, 0) = [3/4, 1/4], times 2 -> [1.5, 0.5]
    weights = task_mixing_weights(logits, torch.tensor([1, 0, 1]), top_k=2, scale=2.0)
    torch.testing.assert_close(weights, torch.tensor([[1.5, 0.5], [1.0, 1.0], [1.5, 0.5]]))
    with pytest.raises(IndexError):
        task_mixing_weights(logits, torch.tensor([2]), top_k=2, scale=2.0)


@pytest.mark.parametrize("gate", ["delta", "components"])
def test_a_router_away_from_uniform_changes_the_pretrained_layer_only_when_it_gates_components(gate):
    model, layer = _one_layer(gate)
    x = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    torch.testing.assert_close(model(x), torch.tensor([[4.0, 3.0, 2.0]]))  # W x at init, both gates
    layer.set_fixed_routing("default", torch.tensor([2.0, 0.0]))
    # The experts are the top-2 components: expert 0 = 4 e1 e1^T, expert 1 = 3 e2 e2^T; the residual 2 e3 e3^T.
    # "components": 2 * 4 + 0 * 3 + 2 -> [8, 0, 2]; "delta": B A = B0 A0 (nothing learned) -> W x unchanged.
    expected = [[8.0, 0.0, 2.0]] if gate == "components" else [[4.0, 3.0, 2.0]]
    torch.testing.assert_close(model(x), torch.tensor(expected))


def test_gate_delta_scales_only_what_training_changed():
    model, layer = _one_layer("delta")
    with torch.no_grad():  # expert 0's A row e1 -> e1 + e4 (B0 column 0 = sqrt(4) e1, so B A adds 4 x4 to y1)
        layer.badit_A["default"][0, 3] += layer.badit_A["default"][0, 0]
    layer.set_fixed_routing("default", torch.tensor([0.5, 1.5]))
    x = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    # y1 = 4 (pretrained, weight 1) + 0.5 * 4 (the learned change, gated) = 6; y2, y3 unchanged
    torch.testing.assert_close(model(x), torch.tensor([[6.0, 3.0, 2.0]]))
    merged = model.merge_and_unload()  # the fixed routing folds into one weight: the same function
    torch.testing.assert_close(merged(x), torch.tensor([[6.0, 3.0, 2.0]]))


def test_the_router_gets_no_gradient_from_an_unchanged_delta():
    model, layer = _one_layer("delta", router_init="random")
    model(torch.randn(3, 4)).sum().backward()
    assert torch.count_nonzero(layer.badit_router["default"].weight.grad) == 0  # B A = B0 A0: nothing to gate
    assert layer.badit_A["default"].grad.abs().sum() > 0


def test_gate_delta_equals_gate_components_at_uniform_routing_in_value_and_gradient():
    outputs, grads = [], []
    for gate in ("delta", "components"):
        torch.manual_seed(3)
        model = get_peft_model(
            make_tiny_model("llama"),
            badit.BaditConfig(r=2, num_experts=3, lora_dropout=0.0, regroup=False, gate=gate),
        )
        ids = torch.randint(4, 100, (2, 7))
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        outputs.append(out.logits.detach())
        grads.append(torch.cat([p.grad.flatten() for n, p in model.named_parameters() if "badit_B" in n]))
    torch.testing.assert_close(outputs[0], outputs[1])
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)


def test_oracle_routing_needs_task_ids_and_routes_each_sequence_by_its_task():
    model = get_peft_model(
        make_tiny_model("llama"),
        badit.BaditConfig(r=2, num_experts=3, regroup=False, routing="task", num_tasks=2, lora_dropout=0.0),
    )
    layer = next(m for m in model.modules() if isinstance(m, BaditLinear))
    assert badit.adapter.uses_task_routing(model)
    ids = torch.randint(4, 100, (3, 5))
    with pytest.raises(RuntimeError, match="routing_tasks"):
        model(input_ids=ids)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, BaditLinear):
                module.badit_task_logits["default"].copy_(torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, -1.0]]))
    with badit.routing_tasks(model, torch.tensor([1, 0, 1])):
        model(input_ids=ids)
    weights = layer.badit_state["default"].routing_weights
    e = torch.exp(torch.tensor([1.0, 0.0, -1.0]))
    torch.testing.assert_close(weights[1], torch.ones(3))  # task 0: uniform, times K
    torch.testing.assert_close(weights[0], 3 * e / e.sum())
    torch.testing.assert_close(weights[2], weights[0])


def test_oracle_routing_logits_are_trained_saved_and_loaded(tmp_path):
    config = badit.BaditConfig(r=2, num_experts=3, regroup=False, routing="task", num_tasks=2)
    model = get_peft_model(make_tiny_model("llama"), config)
    ids = torch.randint(4, 100, (2, 5))
    with badit.routing_tasks(model, torch.tensor([0, 1])):
        model(input_ids=ids, labels=ids).loss.backward()
    logits = [p for n, p in model.named_parameters() if "badit_task_logits" in n]
    assert logits and all(p.requires_grad and p.grad is not None for p in logits)
    with torch.no_grad():
        for p in logits:
            p.normal_()
    model.eval()
    with badit.routing_tasks(model, torch.tensor([0, 1])):
        before = model(input_ids=ids).logits
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(make_tiny_model("llama"), tmp_path)
    with badit.routing_tasks(loaded, torch.tensor([0, 1])):
        torch.testing.assert_close(loaded(input_ids=ids).logits, before)


def test_task_ids_repeat_for_generated_rows_and_refuse_a_mismatch():
    state = RoutingState()
    with state.routing_tasks(torch.tensor([3, 5])):
        torch.testing.assert_close(state.batch_task_ids(4), torch.tensor([3, 3, 5, 5]))
        torch.testing.assert_close(state.batch_task_ids(1, torch.tensor([1])), torch.tensor([5]))
        with pytest.raises(ValueError, match="2 task ids for a batch of 3"):
            state.batch_task_ids(3)
    assert state.task_ids is None


def test_an_adapter_saved_before_the_gate_switch_loads_with_gated_components(tmp_path):
    import json

    model = get_peft_model(make_tiny_model("llama"), badit.BaditConfig(r=2, num_experts=3, regroup=False))
    model.save_pretrained(tmp_path)
    path = tmp_path / "adapter_config.json"
    saved = json.loads(path.read_text())
    assert saved["gate"] == "delta"
    del saved["gate"]  # as written by badit before the switch
    path.write_text(json.dumps(saved))
    assert badit.BaditConfig.from_pretrained(tmp_path).gate == "components"


def test_bad_values_are_refused_with_the_field_named():
    with pytest.raises(ValueError, match="gate"):
        badit.BaditConfig(gate="experts")
    with pytest.raises(ValueError, match="num_tasks"):
        badit.BaditConfig(routing="task")


def test_running_moments_average_exactly_until_the_window_is_full():
    from badit.adapter.routing import MOMENTS_WINDOW, batch_sums, standardize, update_moments

    moments = torch.zeros(3, 2)
    moments = update_moments(moments, batch_sums(torch.tensor([[1.0, 2.0], [3.0, 2.0]])))
    moments = update_moments(moments, batch_sums(torch.tensor([[5.0, 2.0]])))
    # the mean of 1, 3, 5 is 3; of their squares (1 + 9 + 25) / 3 = 35/3; the second feature is 2 throughout
    torch.testing.assert_close(moments, torch.tensor([[3.0, 2.0], [35 / 3, 4.0], [3.0, 3.0]]))
    # standardised: (x - 3) / sqrt(35/3 - 9 + 1e-5) = (x - 3) / sqrt(8/3); the constant feature becomes 0
    out = standardize(torch.tensor([[3.0 + (8 / 3) ** 0.5, 2.0]]), moments)
    torch.testing.assert_close(out, torch.tensor([[1.0, 0.0]]), atol=1e-5, rtol=1e-5)
    full = torch.stack([torch.zeros(2), torch.zeros(2), torch.full((2,), float(MOMENTS_WINDOW))])
    # past the window a batch of 10 moves the mean 10 / 2000 of the way: 0 -> 0.005 * 4 = 0.02
    moved = update_moments(full, batch_sums(torch.full((10, 2), 4.0)))
    torch.testing.assert_close(moved[0], torch.full((2,), 0.02))


def test_standardize_passes_the_input_unchanged_before_any_moments():
    from badit.adapter.routing import standardize

    x = torch.tensor([[1.0, -2.0]])
    torch.testing.assert_close(standardize(x, torch.zeros(3, 2)), x)


def test_standardized_router_input_updates_moments_in_training_only_and_round_trips(tmp_path):
    config = badit.BaditConfig(
        r=2, num_experts=3, regroup=False, router_input="standardized", lora_dropout=0.0
    )
    model = get_peft_model(make_tiny_model("llama"), config)
    layer = next(m for m in model.modules() if isinstance(m, BaditLinear))
    ids = torch.randint(4, 100, (4, 6))
    model.train()
    model(input_ids=ids)
    assert float(layer.badit_router_moments["default"][2, 0]) == 4  # four sequences seen
    model.eval()
    with torch.no_grad():
        before = model(input_ids=ids).logits
    assert float(layer.badit_router_moments["default"][2, 0]) == 4  # evaluation reads, never writes
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(make_tiny_model("llama"), tmp_path)
    loaded_layer = next(m for m in loaded.modules() if isinstance(m, BaditLinear))
    torch.testing.assert_close(
        loaded_layer.badit_router_moments["default"], layer.badit_router_moments["default"]
    )
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, before)


def test_the_random_permutation_control_is_a_seeded_balanced_permutation():
    import numpy as np

    from badit.regrouping.plan import plan_regroup, random_plan

    rng = np.random.default_rng(0)
    directions = rng.normal(size=(12, 5))  # K = 3 experts of r = 4
    plan = random_plan(directions, 3, 4)
    assert sorted(plan.perm.tolist()) == list(range(12))  # every component placed exactly once
    np.testing.assert_array_equal(random_plan(directions, 3, 4).perm, plan.perm)  # same window, same draw
    assert not np.array_equal(random_plan(directions + 1.0, 3, 4).perm, plan.perm)  # another window
    assert set(plan.stats) == set(plan_regroup(directions, 3, 4).stats)  # logged like BADIT's regroups


def test_the_random_control_reaches_regroup_through_the_config():
    from badit.regrouping import regroup

    config = badit.BaditConfig(r=2, num_experts=3, lora_dropout=0.0, regroup_assignment="random")
    model = get_peft_model(make_tiny_model("llama"), config)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    ids = torch.randint(4, 100, (2, 6))
    model(input_ids=ids, labels=ids).loss.backward()
    a0 = [m.badit_A0["default"].clone() for m in model.modules() if isinstance(m, BaditLinear)]
    stats = regroup(model, optimizer)
    moved = sum(int(s["moved"]) for s in stats.values())
    after = [m.badit_A0["default"] for m in model.modules() if isinstance(m, BaditLinear)]
    assert moved > 0 and any(not torch.equal(x, y) for x, y in zip(a0, after))
    with pytest.raises(ValueError, match="regroup_assignment"):
        badit.BaditConfig(regroup_assignment="greedy")


def test_a_model_called_with_keyword_inputs_routes(tmp_path):
    # PEFT's generic suite calls plain modules as model(X=x) (vision: pixel_values=, audio: input_features=)
    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin0, self.lin1 = nn.Linear(10, 20), nn.Linear(20, 2)

        def forward(self, X):
            return self.lin1(torch.relu(self.lin0(X)))

    torch.manual_seed(0)
    base = MLP()
    x = torch.randn(4, 10)
    expected = base(x)
    model = get_peft_model(
        base, badit.BaditConfig(r=2, num_experts=2, target_modules=["lin0"], regroup=False)
    )
    model.eval()  # no dropout
    torch.testing.assert_close(model(X=x), expected, atol=1e-5, rtol=1e-5)  # function preserved at init


@pytest.mark.slow
def test_oracle_routing_trains_and_evaluates_through_badit_train(tmp_path):
    """method.routing: task end to end: the trainer passes each example's task id, the task logits learn
    (they start at 0) and evaluation routes each test prompt by its task (else it would raise)."""
    import json

    from safetensors.torch import load_file

    from badit.experiments.config import from_dict
    from badit.experiments.settings import run
    from tests.helpers import tiny_run_config

    config = tiny_run_config(
        tmp_path,
        "badit",
        method={"routing": "task", "router_lr_multiplier": 30},
        training={"max_steps": 4, "per_device_train_batch_size": 4},
        evaluation={"max_examples_per_task": 2, "max_new_tokens": 2},
    )
    metrics = run(from_dict(config))
    assert set(metrics["tasks"]) == {"demo_copy_words", "demo_reverse_words"}
    weights = load_file(str(tmp_path / "run-badit-multitask" / "adapter" / "adapter_model.safetensors"))
    logits = [v for k, v in weights.items() if "badit_task_logits" in k]
    assert logits and all(v.shape == (2, 3) for v in logits)
    assert max(float(v.abs().max()) for v in logits) > 0  # trained away from the uniform start
    assert (
        json.loads((tmp_path / "run-badit-multitask" / "adapter" / "adapter_config.json").read_text())[
            "num_tasks"
        ]
        == 2
    )
