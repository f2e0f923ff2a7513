"""The seed- and example-aware paired interval (badit.evaluation.statistics): a hand-worked case, and
simulations of equal and of different methods (thousands of intervals at once, well under a second)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from badit.evaluation.statistics import (
    c4,
    describe,
    describe_resolvable,
    interval_arrays,
    paired_interval,
    resolvable_difference,
)

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
    half = stats.t.ppf(0.975, 8 / 3) * np.sqrt(0.5)  # 3.42 * 0.707 = 2.42
    assert out["ci95"] == pytest.approx([3.0 - half, 3.0 + half])
    assert (out["seeds"], out["examples"], out["tasks"]) == (2, 4, 2)
    assert describe(out) == f"+3.00 [{3 - half:+.2f}, {3 + half:+.2f}] (n = 4 examples x 2 seeds)"
    # smallest resolvable difference: nc * SE / c4 with nc = 4.549 (noncentral t at df 8/3 exceeding
    # t_{0.975} = 3.420 with probability 0.8; the normal approximation 3.420 + 0.998 = 4.418) and
    # c4(8/3) = sqrt(3/4) Gamma(11/6) / Gamma(4/3) = 0.9123: 4.549 * 0.7071 / 0.9123 = 3.526
    assert out["resolvable"] == pytest.approx(3.526, abs=1e-3) and out["power"] == 0.8
    assert describe_resolvable(out) == "≥ 3.53 (n = 4 examples x 2 seeds)"
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


def test_resolvable_difference_worked_by_hand():
    # df = 2 (3 seeds), SE = 3: t_{0.975, 2} = 4.303 (t tables), half-width 4.303 * 3 = 12.91.
    # Resolvable: nc = 5.653 (noncentral t, df 2, exceeds 4.303 with probability 0.8), over the mean of an
    # estimated SE, c4(2) = Gamma(3/2) / Gamma(1) = sqrt(pi)/2 = 0.8862: 5.653 * 3 / 0.8862 = 19.14
    out = resolvable_difference(3.0, 2.0)
    assert out["half_width"] == pytest.approx(12.908, abs=1e-3)
    assert out["resolvable"] == pytest.approx(19.138, abs=1e-3)
    # df = 28, SE = 1: nc 2.902 (the normal approximation's 2.048 + 0.855 = 2.903), c4 0.9911: 2.928
    assert resolvable_difference(1.0, 28.0)["resolvable"] == pytest.approx(2.928, abs=1e-3)
    # no standard error (fewer than 2 examples or seeds): None, NaN inside arrays, '-' in a table
    assert resolvable_difference(None, 5.0) is None and resolvable_difference(float("nan"), 5.0) is None
    assert resolvable_difference(2.0, 0.0) is None
    batch = resolvable_difference(np.array([3.0, np.nan]), np.array([2.0, 2.0]))
    assert batch["resolvable"][0] == pytest.approx(19.138, abs=1e-3) and np.isnan(batch["resolvable"][1])
    assert describe_resolvable(None) == "-"
    assert describe_resolvable({"resolvable": None, "examples": 4, "seeds": 1}) == "-"
    # a result written before the field existed (an older sweep.json): computed from std_error and df
    old = {"mean": 1.0, "ci95": [-1.0, 3.0], "std_error": 3.0, "df": 2.0, "examples": 24, "seeds": 3}
    assert describe_resolvable(old) == "≥ 19.14 (n = 24 examples x 3 seeds)"


@pytest.mark.parametrize(
    "seeds, seed_sd, expected_df",
    [
        (1, 0.0, 28.0),  # examples only: df = N - T = 30 - 2
        (3, 3.0, 7.99),  # both variance components: Welch-Satterthwaite df, worked below
    ],
)
def test_a_difference_of_the_resolvable_size_is_found_80_percent_of_the_time(seeds, seed_sd, expected_df):
    """The definition of the resolvable difference, checked by simulation: with the true difference
    equal to it, the 95% interval excludes 0 in about 80% of repetitions, and in far fewer at half of it
    (4000 repetitions at once; the binomial standard error of the rate is 0.006)."""
    rng = np.random.default_rng(22)
    tasks, examples, reps = 2, 15, 4000
    n = tasks * examples
    # D[s, i] = delta + example effect (SD 10) + seed effect (SD seed_sd) + seed-by-example noise (SD 10)
    # The interval's variance estimate has expectation V_e = (10^2 + 10^2 / S) / N (seed-averaged
    # examples) and V_s = (seed_sd^2 + 10^2 / N) / S (the noise enters both, module docstring).
    # S = 1: V = 200 / 30 = 6.67 (no seed term), df 28, SE 2.582, resolvable nc 2.902 * 2.582 = 7.49.
    # S = 3, seed_sd 3: V_e = 133.3 / 30 = 4.444, V_s = (9 + 3.333) / 3 = 4.111, V = 8.556, SE 2.925;
    # df = 8.556^2 / (4.444^2 / 28 + 4.111^2 / 2) = 73.2 / 9.155 = 7.99; nc 3.202 * 2.925 = 9.36.
    # These use the true SE, so the figure's allowance for an estimated SE (1 / c4) is taken back out.
    v_examples = (100.0 + 100.0 / seeds) / n
    v_seeds = (seed_sd**2 + 100.0 / n) / seeds if seeds > 1 else 0.0
    total = v_examples + v_seeds
    df = total**2 / (v_examples**2 / (n - tasks) + (v_seeds**2 / (seeds - 1) if seeds > 1 else 0.0))
    assert df == pytest.approx(expected_df, abs=0.01)
    delta = resolvable_difference(np.sqrt(total), df)["resolvable"] * c4(df)
    assert delta == pytest.approx(7.49 if seeds == 1 else 9.36, abs=0.01)
    index = np.repeat(np.arange(tasks), examples)

    def found(difference: float) -> float:
        D = (
            difference
            + rng.normal(0, 10, (reps, 1, n))
            + rng.normal(0, seed_sd, (reps, seeds, 1))
            + rng.normal(0, 10, (reps, seeds, n))
        )
        out = interval_arrays(D, index)
        return float(((out["low"] > 0) | (out["high"] < 0)).mean())

    # exact (noncentral t) power at this delta: 0.800 at df 28, 0.799 at df 8 (the 3-seed interval's
    # estimated df varies from draw to draw: 0.79 in this simulation; 0.81 with 1 seed)
    assert abs(found(delta) - 0.80) <= 0.04
    assert found(delta / 2) <= 0.45  # exact 0.29 at half the resolvable difference (0.29-0.30 simulated)
