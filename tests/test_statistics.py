"""The seed- and example-aware paired interval (badit.evaluation.statistics): a hand-worked case, and
simulations of equal and of different methods (thousands of intervals at once, well under a second)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from badit.evaluation.statistics import describe, interval_arrays, paired_interval

TASKS, EXAMPLES, SEEDS = 2, 12, 3  # the simulation: 2 tasks x 12 examples, 3 seeds


def records(rows: list[list[float]]) -> list[list[dict]]:
    """One list of prediction records per seed; examples 0, 1 of task a, then 0, 1 of task b."""
    keys = [("a", 0), ("a", 1), ("b", 0), ("b", 1)]
    return [[{"task": t, "id": i, "rougeL": v} for (t, i), v in zip(keys, row)] for row in rows]


def test_interval_worked_by_hand():
    # D[s, i] = method - reference; reference scores 0
    method = records([[2.0, 4.0, 1.0, 3.0], [4.0, 6.0, 3.0, 1.0]])
    zero = records([[0.0] * 4, [0.0] * 4])
    out = paired_interval(method, zero)
    # seed means per example Dbar = [3, 5, 2, 2]; task means 4 and 2 -> theta = 3
    assert out["mean"] == pytest.approx(3.0)
    # V_examples: within-task variances 2 (task a: (1 + 1) / 1) and 0 -> (2/2 + 0/2) / 2^2 = 0.25
    # V_seeds: theta_0 = (3 + 2) / 2 = 2.5, theta_1 = (5 + 2) / 2 = 3.5 -> var 0.5, / 2 seeds = 0.25
    assert out["std_error"] == pytest.approx(np.sqrt(0.5))
    # df = 0.5^2 / (0.25^2 / (4 - 2) + 0.25^2 / (2 - 1)) = 0.25 / 0.09375 = 8/3
    assert out["df"] == pytest.approx(8 / 3)
    half = stats.t.ppf(0.975, 8 / 3) * np.sqrt(0.5)  # 4.01 * 0.707 = 2.84
    assert out["ci95"] == pytest.approx([3.0 - half, 3.0 + half])
    assert (out["seeds"], out["examples"], out["tasks"]) == (2, 4, 2)
    assert describe(out) == f"+3.00 [{3 - half:+.2f}, {3 + half:+.2f}] (n = 4 examples x 2 seeds)"
    with pytest.raises(ValueError, match="as many seeds"):
        paired_interval(method, zero[:1])
    with pytest.raises(ValueError, match="same test examples"):
        paired_interval(method, [r[:3] for r in zero])


def simulate(rng, reps: int, seed_sd: float, difference: float = 0.0) -> np.ndarray:
    """(reps, S, N) differences of two methods: per-example difficulty shared by both, a per-example
    effect of each method (mean 0: equal in the population), a per-run seed effect (seed_sd points,
    shifting every example of that run) and per-(run, example) noise; method A is ``difference`` better."""
    n = TASKS * EXAMPLES
    difficulty = rng.normal(50, 20, (reps, 1, n))
    a = difficulty + rng.normal(0, 10, (reps, 1, n)) + rng.normal(0, seed_sd, (reps, SEEDS, 1))
    b = difficulty + rng.normal(0, 10, (reps, 1, n)) + rng.normal(0, seed_sd, (reps, SEEDS, 1))
    a = a + rng.normal(0, 10, (reps, SEEDS, n)) + difference
    b = b + rng.normal(0, 10, (reps, SEEDS, n))
    return a - b


TASK_INDEX = np.repeat(np.arange(TASKS), EXAMPLES)


@pytest.mark.parametrize("seed_sd", [0.0, 10.0])
def test_equal_methods_are_called_different_at_most_7_percent_of_the_time(seed_sd):
    """Without a seed effect and with a 10-point one (where an interval over examples alone, as the old
    bootstrap of seed-averaged scores, excludes 0 in about 45% of the repetitions)."""
    rng = np.random.default_rng(18)
    D = simulate(rng, 4000, seed_sd)
    out = interval_arrays(D, TASK_INDEX)
    excludes_zero = (out["low"] > 0) | (out["high"] < 0)
    assert excludes_zero.mean() <= 0.07
    # the examples-only interval, for contrast (normal quantile, seed variance ignored)
    per_example = D.mean(axis=1)
    by_task = per_example.reshape(-1, TASKS, EXAMPLES)
    se = np.sqrt((by_task.var(axis=-1, ddof=1) / EXAMPLES).sum(axis=-1)) / TASKS
    naive = np.abs(by_task.mean(axis=-1).mean(axis=-1)) > 1.96 * se
    if seed_sd:
        assert naive.mean() > 0.3  # the failure this interval fixes


def test_a_true_difference_is_found():
    rng = np.random.default_rng(19)
    D = simulate(rng, 4000, seed_sd=2.0, difference=15.0)
    out = interval_arrays(D, TASK_INDEX)
    assert (out["low"] > 0).mean() >= 0.8  # power at a 15-point difference, 24 examples x 3 seeds
    covers = (out["low"] < 15.0) & (out["high"] > 15.0)
    assert 0.93 <= covers.mean() <= 0.99  # and the interval is centred on the truth
