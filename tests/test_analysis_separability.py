"""Router separability (badit.analysis.separability): probe accuracy, between-task share, mutual
information and the gradient decomposition, each on inputs small enough to work by hand."""

import math

import torch
from peft import get_peft_model

import badit
from badit.analysis.separability import (
    between_task_share,
    common_share,
    gradient_task_share,
    nearest_centroid_accuracy,
    router_separability,
    routing_mutual_information,
    separability_verdict,
)
from tests.helpers import make_tiny_model


def test_nearest_centroid_leaves_each_sample_out_of_its_own_centroid():
    # task 0 at x = 0 and 2, task 1 at x = 3 and 5. Leave-one-out: x=0 -> own centroid 2 (distance 2),
    # other 4 (4): right; x=2 -> own 0 (2), other 4 (2): a tie, argmin takes the lower class, 0: right;
    # x=3 -> own 5 (2), other 1 (2): tie -> class 0: wrong; x=5 -> own 3 (2), other 1 (4): right. 3/4.
    features = torch.tensor([[0.0], [2.0], [3.0], [5.0]])
    assert nearest_centroid_accuracy(features, torch.tensor([0, 0, 1, 1])) == 0.75
    # well separated: all right; a sample alone in its class has no centroid and counts as wrong
    assert (
        nearest_centroid_accuracy(torch.tensor([[0.0], [0.1], [9.0], [9.1]]), torch.tensor([4, 4, 7, 7])) == 1
    )
    assert nearest_centroid_accuracy(torch.tensor([[0.0], [0.1], [9.0]]), torch.tensor([0, 0, 1])) == 2 / 3


def test_between_task_share_is_the_r_squared_of_the_task():
    # task means 1 and 4, grand mean 2.5: between = 2 * 1.5^2 + 2 * 1.5^2 = 9; total = 2.25+0.25... by points:
    # x = 0, 2, 3, 5 about 2.5: 6.25 + 0.25 + 0.25 + 6.25 = 13; share 9 / 13
    features = torch.tensor([[0.0], [2.0], [3.0], [5.0]])
    assert math.isclose(between_task_share(features, torch.tensor([0, 0, 1, 1])), 9 / 13)
    assert between_task_share(torch.ones(3, 2), torch.tensor([0, 1, 1])) == 0.0


def test_common_share_is_the_mean_vectors_part_of_the_energy():
    # x = (1, 1) and (1, -1): mean (1, 0), |mean|^2 = 1, mean |x|^2 = 2: half
    assert common_share(torch.tensor([[1.0, 1.0], [1.0, -1.0]])) == 0.5
    assert common_share(torch.tensor([[2.0, 3.0], [2.0, 3.0]])) == 1.0


def test_mutual_information_of_routing():
    labels = torch.tensor([0, 0, 1, 1])
    same = torch.tensor([[1.0, 1.0]] * 4)  # every task the uniform mixture: no information
    assert routing_mutual_information(same, labels) == 0.0
    own = torch.tensor([[2.0, 0.0], [2.0, 0.0], [0.0, 2.0], [0.0, 2.0]])  # one expert each: log 2
    assert math.isclose(routing_mutual_information(own, labels), math.log(2))
    # task 0 at (3/4, 1/4), task 1 at (1/4, 3/4), p(e) = 1/2 each: 2 * 1/2 * (3/4 ln 1.5 + 1/4 ln 0.5)
    half = torch.tensor([[0.75, 0.25], [0.75, 0.25], [0.25, 0.75], [0.25, 0.75]])
    expected = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert math.isclose(routing_mutual_information(half, labels), expected, rel_tol=1e-12)


def test_gradient_task_share_splits_common_from_task_specific():
    # g_0 = (3, 1), g_1 = (3, -1): mean (3, 0); specific (0, ±1): 2 / (10 + 10) = 0.1
    assert math.isclose(gradient_task_share(torch.tensor([[3.0, 1.0], [3.0, -1.0]])), 0.1)
    assert gradient_task_share(torch.tensor([[1.0, 0.0], [-1.0, 0.0]])) == 1.0  # they cancel
    assert gradient_task_share(torch.zeros(2, 3)) is None


def test_router_separability_on_a_tiny_model_and_the_verdict():
    config = badit.BaditConfig(r=2, num_experts=3, regroup=False, router_init="random", gate="components")
    model = get_peft_model(make_tiny_model("llama"), config)
    g = torch.Generator().manual_seed(0)
    batches = {}
    for task, low in (("a", 4), ("b", 60)):  # two tasks of two tokens each: pooled prompts form two clusters
        ids = torch.randint(low, low + 2, (5, 8), generator=g)
        labels = ids.clone()
        labels[:, :5] = -100
        batches[task] = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    sep = router_separability(model, batches)
    assert len(sep["layers"]) == 2 and sep["tasks"] == ["a", "b"]
    assert sep["input_probe_accuracy"] == [1.0, 1.0]
    assert all(0 < s <= 1 for s in sep["input_between_task_share"])
    assert all(0 < s < 1 for s in sep["input_common_share"])
    assert all(0 <= mi <= math.log(2) + 1e-12 for mi in sep["mutual_information"])
    assert all(n > 0 for n in sep["router_norm"]) and all(s > 0 for s in sep["logit_std"])
    assert all(s is not None and 0 <= s <= 1 for s in sep["router_gradient_task_share"])
    assert sep["max_mutual_information"] == math.log(2)
    # gate="delta" at init: nothing learned yet, so the router has no gradient at all (not a tiny one)
    config = badit.BaditConfig(r=2, num_experts=3, regroup=False, router_init="random")
    delta = router_separability(get_peft_model(make_tiny_model("llama"), config), batches)
    assert delta["router_gradient_task_share"] == [None, None]
    verdict = separability_verdict({**sep, "mutual_information": [0.0, 0.0]})
    assert verdict.startswith("the routers do not route although they could")
    assert separability_verdict({**sep, "mutual_information": [0.5, 0.5]}).startswith("the routers route")


def test_the_demo_reports_each_conflicting_pairs_usage_cosine():
    from badit.experiments.demo import routing_lines

    tasks = ["demo_add_one", "demo_copy_words", "demo_subtract_one"]
    similarity = [[1.0, 0.2, 0.35], [0.2, 1.0, 0.1], [0.35, 0.1, 1.0]]
    analysis = {
        "tasks": tasks,
        "expert_usage": {"similarity": similarity},
        "router_separability": {"verdict": "the routers route: ..."},
    }
    # only add/subtract is a pair with both tasks present (copy's partner, reverse, is absent)
    assert routing_lines(analysis) == [
        "routing: the routers route: ...",
        "expert-usage cosine of the conflicting pairs (1 = routed alike): add_one / subtract_one 0.350",
    ]
    assert routing_lines({"tasks": tasks}) == []  # a model without routers (lora): nothing to say
