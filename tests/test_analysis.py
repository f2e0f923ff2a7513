"""Interference measurements give known numbers on hand-made cases."""

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from badit.analysis import cosine_matrix, gradient_conflict, neuron_overlap, top_fraction_jaccard
from tests.helpers import make_tiny_model


class LinearLoss(nn.Module):
    """loss = w1 . x1 + w2 . x2, so the gradient of task t is exactly its (x1, x2)."""

    def __init__(self):
        super().__init__()
        self.first = nn.Linear(2, 1, bias=False)
        self.second = nn.Linear(2, 1, bias=False)

    def forward(self, input_ids, attention_mask=None, labels=None):
        x1, x2 = input_ids[:, :2].float(), input_ids[:, 2:].float()
        return SimpleNamespace(loss=(self.first(x1) + self.second(x2)).sum())


def test_gradient_conflict_matches_hand_computed_cosines():
    model = LinearLoss()
    batches = {
        "a": {"input_ids": torch.tensor([[1, 0, 0, 1]])},
        "b": {"input_ids": torch.tensor([[-1, 0, 0, -1]])},
        "c": {"input_ids": torch.tensor([[1, 0, 0, 0]])},
    }
    out = gradient_conflict(model, batches)
    assert out["tasks"] == ["a", "b", "c"]
    assert out["layers"] == ["first", "second"]
    expected = torch.tensor(
        [[1, -1, 1 / math.sqrt(2)], [-1, 1, -1 / math.sqrt(2)], [1 / math.sqrt(2), -1 / math.sqrt(2), 1]]
    )
    torch.testing.assert_close(out["overall"], expected.float())
    # Layer "first" sees x1 only: a and c agree exactly, b opposes both.
    torch.testing.assert_close(out["per_layer"][0], torch.tensor([[1.0, -1, 1], [-1, 1, -1], [1, -1, 1]]))
    assert model.first.weight.grad is None  # the measurement leaves .grad untouched


def test_gradient_conflict_rejects_frozen_model_and_single_task():
    model = LinearLoss()
    with pytest.raises(ValueError, match="at least 2 tasks"):
        gradient_conflict(model, {"a": {"input_ids": torch.ones(1, 4, dtype=torch.long)}})
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameter"):
        gradient_conflict(model, {"a": {}, "b": {}})


def test_cosine_matrix():
    v = torch.tensor([[3.0, 4.0], [4.0, -3.0], [-6.0, -8.0]])
    torch.testing.assert_close(cosine_matrix(v), torch.tensor([[1.0, 0, -1], [0, 1, 0], [-1, 0, 1]]))


def test_top_fraction_jaccard_known_sets():
    scores = torch.tensor([[[9.0, 8, 1, 0], [9.0, 0, 8, 1], [0.0, 1, 8, 9]]])  # 1 layer, 3 tasks, 4 neurons
    jac = top_fraction_jaccard(scores, 0.5)  # top-2 sets: {0,1}, {0,2}, {2,3}
    expected = torch.tensor([[[1.0, 1 / 3, 0], [1 / 3, 1, 1 / 3], [0, 1 / 3, 1]]])
    torch.testing.assert_close(jac, expected)
    with pytest.raises(ValueError, match="fraction"):
        top_fraction_jaccard(scores, 0.0)


def test_neuron_overlap_on_tiny_model():
    model = make_tiny_model("llama")
    ids = torch.randint(3, 128, (2, 9), generator=torch.Generator().manual_seed(0))
    other = torch.randint(3, 128, (2, 9), generator=torch.Generator().manual_seed(1))
    batches = {
        "same1": {"input_ids": ids},
        "same2": {"input_ids": ids.clone()},
        "other": {"input_ids": other},
    }
    out = neuron_overlap(model, batches, top_fraction=0.1)
    assert out["layers"] == ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]
    assert out["jaccard"].shape == (2, 3, 3)
    assert torch.all(out["jaccard"][:, 0, 1] == 1.0)  # identical inputs -> identical top neurons
    assert torch.all(out["jaccard"][:, 0, 2] < 1.0)
    with pytest.raises(ValueError, match="module_suffix"):
        neuron_overlap(model, batches, module_suffix="nonexistent")


def test_expert_usage_and_report_on_badit_model(tmp_path, capsys):
    import json

    from peft import get_peft_model

    from badit import BaditConfig
    from badit.analysis import analyze, expert_usage

    model = get_peft_model(make_tiny_model("llama"), BaditConfig(r=2, num_experts=4, top_k=4, regroup=False))
    ids = torch.randint(3, 128, (3, 8), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :5] = -100
    batches = {
        "t0": {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels},
        "t1": {"input_ids": ids.flip(1), "attention_mask": torch.ones_like(ids), "labels": labels.flip(1)},
    }
    usage = expert_usage(model, batches)
    assert usage["usage"].shape == (2, 2, 4)  # 2 adapted gate_proj layers, 2 tasks, 4 experts
    # Zero-initialised router: every task spreads its weight uniformly over the experts.
    torch.testing.assert_close(usage["usage"], torch.full((2, 2, 4), 0.25))
    assert usage["max_deviation"] == 0.0  # no preference: similarity of preferences is 0 off the diagonal
    assert usage["similarity"][0, 1] == 0.0

    # A router that sends task t0's prompts elsewhere makes the profiles differ.
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "badit_router"):
                module.badit_router["default"].weight.normal_(0, 5.0)
    usage = expert_usage(model, batches)
    torch.testing.assert_close(usage["usage"].sum(-1), torch.ones(2, 2))
    assert usage["max_deviation"] > 0.01
    assert -1.0 <= usage["similarity"][0, 1] < 0.999
    # The same batch under two names prefers exactly the same experts.
    same = expert_usage(model, {"a": batches["t0"], "b": batches["t0"]})
    torch.testing.assert_close(same["similarity"], torch.ones(2, 2))

    capsys.readouterr()
    result = analyze(model, batches, tmp_path / "analysis", neuron_top_fraction=0.1, progress=True)
    bars = [line.split("\r")[-1] for line in capsys.readouterr().err.strip().split("\n")]
    assert [bar.split(":")[0] for bar in bars] == ["gradients", "expert usage", "separability", "neurons"]
    assert all("100%" in bar and "2/2" in bar for bar in bars)  # one step per task, 2 tasks
    saved = json.loads((tmp_path / "analysis" / "analysis.json").read_text())
    assert saved["tasks"] == ["t0", "t1"]
    assert set(result) == {
        "tasks",
        "gradient_conflict",
        "expert_usage",
        "router_separability",
        "neuron_overlap",
    }
    assert -1.0 <= saved["gradient_conflict"]["mean_offdiag"] <= 1.0
    for png in ("gradient_conflict.png", "expert_usage.png", "neuron_overlap.png"):
        assert (tmp_path / "analysis" / png).stat().st_size > 1000


def test_gradient_conflict_leaves_the_regroup_gradient_windows_alone():
    from peft import get_peft_model

    from badit import BaditConfig
    from badit.regrouping.gradients import gradient_windows, iter_badit_layers

    model = get_peft_model(make_tiny_model("qwen3"), BaditConfig(r=2, num_experts=4, lora_dropout=0.0))
    ids = torch.randint(3, 128, (2, 8), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    model(**batch).loss.backward()  # one training step's gradients reach the windows
    windows = [w for _, layer in iter_badit_layers(model) for w in gradient_windows(layer).values()]
    assert windows and all(w.backward_passes == 1 for w in windows)
    before = [w.buffer.clone() for w in windows]
    grads_before = [p.grad.clone() for p in model.parameters() if p.requires_grad]

    gradient_conflict(model, {"a": batch, "b": {**batch, "input_ids": ids.flip(1), "labels": ids.flip(1)}})

    assert all(w.backward_passes == 1 for w in windows)
    for window, buffer in zip(windows, before):
        assert torch.equal(window.buffer, buffer)
    for param, grad in zip([p for p in model.parameters() if p.requires_grad], grads_before):
        assert torch.equal(param.grad, grad)
