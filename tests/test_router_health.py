"""Router health statistics on hand-made routing weights (expected values worked out by hand)."""

import math

import pytest
import torch

from badit.analysis.router_health import (
    layer_health,
    routing_problem,
    starved_experts,
    summarize_health,
    tasks_route_alike,
)


def test_layer_health_of_two_sequences():
    # K = 2, router_scale="preserve" (rows sum to K = 2): normalised rows (1, 0) and (0.5, 0.5).
    weights = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    h = layer_health(weights)
    # load = mean of the rows = (0.75, 0.25); top share 0.75
    assert h["load"] == pytest.approx([0.75, 0.25])
    assert h["top_share"] == pytest.approx(0.75)
    # entropy / log 2: row 1 -> 0, row 2 -> 1; mean 0.5
    assert h["entropy"] == pytest.approx(0.5)
    # max_k |w - 1/2|: row 1 -> 0.5, row 2 -> 0; mean 0.25
    assert h["deviation"] == pytest.approx(0.25)


def test_summary_takes_means_and_the_smallest_load():
    layers = {
        "a": {"load": [0.75, 0.25], "entropy": 0.5, "top_share": 0.75, "deviation": 0.25},
        "b": {"load": [0.5, 0.5], "entropy": 1.0, "top_share": 0.5, "deviation": 0.0},
    }
    s = summarize_health(layers)
    # entropy (0.5 + 1) / 2 = 0.75; top share (0.75 + 0.5) / 2 = 0.625; deviation 0.125; min load 0.25
    assert s == pytest.approx({"entropy": 0.75, "top_share": 0.625, "deviation": 0.125, "min_load": 0.25})


def test_collapse_and_uniform_are_detected_only_in_every_layer():
    collapsed = layer_health(torch.tensor([[0.95, 0.03, 0.02], [0.93, 0.05, 0.02]]))  # top share 0.94
    uniform = layer_health(torch.ones(4, 3))
    learnt = layer_health(torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.2, 0.7]]))
    assert "collapsed" in routing_problem({"l0": collapsed, "l1": collapsed})
    assert "94%" in routing_problem({"l0": collapsed, "l1": collapsed})
    assert "uniform" in routing_problem({"l0": uniform, "l1": uniform})
    assert routing_problem({"l0": collapsed, "l1": learnt}) is None
    assert routing_problem({"l0": uniform, "l1": learnt}) is None
    assert routing_problem({}) is None


def test_starved_expert_and_tasks_routing_alike():
    # (L=1, T=2, K=4): fair share 1/4, starved below 0.25 / 4 = 0.0625
    usage = torch.tensor([[[0.40, 0.30, 0.25, 0.05], [0.25, 0.25, 0.25, 0.25]]])
    assert starved_experts(usage) == [(0, 0, 3, pytest.approx(0.05))]
    alike, distance = tasks_route_alike(usage)
    # total variation = (0.15 + 0.05 + 0 + 0.2) / 2 = 0.2
    assert distance == pytest.approx(0.2)
    assert not alike
    same = torch.tensor([[[0.26, 0.24, 0.25, 0.25], [0.25, 0.25, 0.25, 0.25]]])  # distance 0.01
    assert tasks_route_alike(same) == (True, pytest.approx(0.01))
    assert math.isnan(tasks_route_alike(usage[:, :1])[1])
