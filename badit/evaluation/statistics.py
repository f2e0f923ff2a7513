"""A paired interval for a difference of mean task scores that counts seeds *and* examples.

Data: D[s, i] = score of method A minus score of method B on test example i (of task t(i)) in seed s;
both methods are scored on the same examples, and seed s of A is paired with seed s of B. The
statistic is the mean over tasks of the mean over a task's examples of the mean over seeds:

    theta = 1/T * sum_t 1/n_t * sum_{i in t} Dbar[i],    Dbar[i] = 1/S * sum_s D[s, i]

Two sources of chance move theta: which test examples were drawn (example variance) and which
training runs the seeds gave (seed variance). Its variance is estimated as the sum of

    V_examples = 1/T^2 * sum_t var_{i in t}(Dbar[i]) / n_t      (stratified by task; n_t - 1 df each)
    V_seeds    = var_s(theta_s) / S,   theta_s = theta computed on seed s alone   (S - 1 df)

(the seed-by-example interaction enters both, so the sum errs on the wide side), and the interval is
theta +- t_q * sqrt(V_examples + V_seeds) with Welch-Satterthwaite degrees of freedom
(V_e + V_s)^2 / (V_e^2 / df_e + V_s^2 / (S - 1)). With few seeds the seed term has few degrees of
freedom, and the t quantile widens the interval as it must: with 3 seeds t_{0.975, 2} = 4.30.

Why not a hierarchical bootstrap (seeds, then examples): with 3 seeds it has 10 distinct seed resamples
and shrinks the seed variance by (S-1)/S, so its percentile interval is too narrow exactly when seeds
matter (docs/method.md, "Intervals that count seeds", has the simulated error rates). Written by hand:
scipy's t-tests take one sample (seeds or examples), not two variance components with strata; the
formulas are a few lines of numpy over arrays that may carry leading batch axes (the simulations in
tests/test_statistics.py run thousands of intervals at once).

Examples that share an input (the interference suite asks four tasks about the same 100 word lists)
are not independent: a hard input is hard for every task. When the records name their input and inputs
repeat, V_examples is the cluster-robust (sandwich) variance over inputs instead,

    V_examples = C / (C - 1) * sum_c (sum_{i in c} w_i (Dbar[i] - mean_{t(i)}))^2,   w_i = 1 / (T n_t(i))

with C - 1 degrees of freedom (C inputs): the per-task sums above, where every input is its own cluster,
are the special case without shared inputs (Cameron & Miller 2015, "A practitioner's guide to
cluster-robust inference", J. Human Resources 50(2)).

One seed: V_seeds cannot be estimated and the interval counts examples only; it is labelled so
(`describe`) and has no resolvable difference, since a second seed may move the score more than the
interval is wide.

The smallest resolvable difference (`resolvable_difference`) says how large a true difference must be
for this interval, at this n, to exclude 0 in most repetitions of the experiment: a minimum detectable
difference from the same standard error and degrees of freedom as the interval.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import optimize, special, stats

LEVEL = 0.95
POWER = 0.80
"""Power of the resolvable difference: the conventional 80% of power analysis (Cohen 1988, Statistical
Power Analysis for the Behavioral Sciences), a 1-in-5 chance of missing a true difference of that size;
beside the interval's 5% chance of a false claim it weighs a miss a quarter as heavily as a false
claim (beta = 4 alpha), Cohen's argument for the convention."""
RESOLVABLE = (
    f"resolvable: the smallest true difference that the {LEVEL:.0%} interval tells from 0 in "
    f"{POWER:.0%} of repetitions at its n (test examples x seeds); a smaller difference could not "
    "be told from 0 at this n. '-': no interval (seeds that do not pair, no predictions.jsonl, different "
    "test examples, or a task with fewer than 2 examples), or one seed (its interval counts the examples "
    "only: a rerun with another seed can move a score by more than it is wide)."
)
"""What a 'resolvable' cell means, said under every table that shows one (`describe_resolvable`)."""
METHOD = "seed-paired t interval over seeds and examples (variance components, Welch-Satterthwaite df)"


def _task_means(x: np.ndarray, one_hot: np.ndarray) -> np.ndarray:
    """(..., T) mean over each task's examples of x (..., N); one_hot (N, T)."""
    return (x @ one_hot) / one_hot.sum(axis=0)


def interval_arrays(
    differences: np.ndarray,
    task_index: np.ndarray,
    level: float = LEVEL,
    clusters: np.ndarray | None = None,
) -> dict:
    """The interval of the module docstring for ``differences`` (..., S, N) and ``task_index`` (N,) in
    0..T-1; returns arrays of shape (...): mean, low, high, std_error, df. Vectorised over leading axes.
    ``clusters`` (N,) in 0..C-1: the input of each example, when examples share inputs (the
    cluster-robust V_examples, C - 1 df); None: every example is its own input.

    One seed: V_seeds is unknown and left out (the interval counts examples only, df from examples)."""
    D = np.asarray(differences, dtype=float)
    S, N = D.shape[-2:]
    tasks = np.unique(task_index)
    one_hot = (np.asarray(task_index)[:, None] == tasks[None, :]).astype(float)  # (N, T)
    T, counts = len(tasks), one_hot.sum(axis=0)
    if np.any(counts < 2):
        raise ValueError("every task needs at least 2 test examples for an interval")
    per_example = D.mean(axis=-2)  # (..., N): Dbar
    task_means = _task_means(per_example, one_hot)  # (..., T)
    mean = task_means.mean(axis=-1)
    centred = per_example - task_means @ one_hot.T
    if clusters is None:  # within-task sample variance of Dbar, per task
        within = ((centred**2) @ one_hot) / (counts - 1)  # (..., T)
        v_examples = (within / counts).sum(axis=-1) / T**2
        df_examples = float(N - T)
    else:  # the sandwich over inputs: each input's weighted residuals summed before squaring
        labels, clusters = np.unique(clusters, return_inverse=True)
        C = len(labels)
        if C < 2:
            raise ValueError("a clustered interval needs at least 2 distinct inputs")
        weights = 1.0 / (T * (one_hot @ counts))  # (N,): w_i = 1 / (T n_t(i))
        members = (clusters[:, None] == np.arange(C)[None, :]).astype(float)  # (N, C)
        sums = (centred * weights) @ members  # (..., C)
        v_examples = C / (C - 1) * (sums**2).sum(axis=-1)
        df_examples = float(C - 1)
    if S > 1:
        per_seed = _task_means(D, one_hot).mean(axis=-1)  # (..., S): theta_s
        v_seeds = per_seed.var(axis=-1, ddof=1) / S
        total = v_examples + v_seeds
        denominator = v_examples**2 / df_examples + v_seeds**2 / (S - 1)
        df = np.where(denominator > 0, total**2 / np.where(denominator > 0, denominator, 1.0), df_examples)
    else:
        total, df = v_examples, np.full_like(mean, df_examples)
    std_error = np.sqrt(total)
    half = stats.t.ppf(0.5 + level / 2, df) * std_error
    return {"mean": mean, "low": mean - half, "high": mean + half, "std_error": std_error, "df": df}


def resolvable_difference(std_error, df, level: float = LEVEL, power: float = POWER) -> dict | None:
    """The smallest true difference that the interval ``theta +- t_{(1+level)/2, df} * std_error`` tells
    from 0 with probability ``power``, and that interval's half-width.

    ``std_error`` and ``df`` are floats or arrays of one shape (broadcast); returns {"half_width",
    "resolvable"} of that shape (floats for floats), resolvable >= half_width >= 0 for std_error >= 0.
    None for a float std_error or df that is None or not finite (fewer than 2 examples or seeds: no
    variance to estimate), and NaN at such entries of arrays.

    Power analysis (Cohen 1988; Bloom 1995, "Minimum detectable effects", Evaluation Review 19(5)) with
    the exact distribution: the interval excludes 0 on the positive side when theta_hat / SE_hat >
    t_{(1+level)/2, df}, and theta_hat / SE_hat follows a noncentral t with df degrees of freedom and
    noncentrality delta / SE. The resolvable difference is the delta at which that happens with
    probability ``power``:

        resolvable = nc * SE / c4(df),   P(t'_{df, nc} > t_{(1+level)/2, df}) = power

    nc is 2.90 at df = 28 (the normal-approximation t_{0.975} + t_{0.80} = 2.05 + 0.85) but 5.65 at df = 2
    (against 4.30 + 1.06 = 5.36). c4(df) = sqrt(2/df) Gamma((df+1)/2) / Gamma(df/2) is the mean of
    SE_hat / SE (0.886 at df = 2, 0.991 at df = 28): the SE is itself estimated, and with few seeds it
    is low more often than not, so dividing by c4 makes the figure right on average over repetitions
    of the experiment (the two corrections together: 1.19x the earlier t_{0.975} + t_{0.80} figure at
    df = 2, 1.01x at df = 28; tests/test_statistics_clusters.py simulates it). The chance of excluding
    0 on the wrong side is left out (below 1e-8 at df = 2 at that delta)."""
    if std_error is None or df is None:
        return None
    se, dof = np.asarray(std_error, dtype=float), np.asarray(df, dtype=float)
    valid = np.isfinite(se) & np.isfinite(dof) & (dof > 0)
    if se.ndim == 0 and dof.ndim == 0 and not valid:
        return None
    dof = np.where(valid, dof, 1.0)  # any df: the entry becomes NaN below
    critical = stats.t.ppf(0.5 + level / 2, dof)
    half = np.where(valid, critical * se, np.nan)
    nc = np.vectorize(_noncentrality, otypes=[float])(critical, dof, power)
    resolvable = np.where(valid, nc * se / c4(dof), np.nan)
    if half.ndim == 0:
        return {"half_width": float(half), "resolvable": float(resolvable)}
    return {"half_width": half, "resolvable": resolvable}


def c4(df):
    """The mean of an estimated standard error over the true one at ``df`` degrees of freedom,
    sqrt(2/df) Gamma((df+1)/2) / Gamma(df/2) (0.886 at df 2, 0.991 at df 28; float or array)."""
    df = np.asarray(df, dtype=float)
    return np.exp(0.5 * np.log(2.0 / df) + special.gammaln((df + 1) / 2) - special.gammaln(df / 2))


def _noncentrality(critical: float, df: float, power: float) -> float:
    """The noncentrality at which a noncentral t with ``df`` exceeds ``critical`` with probability ``power``.
    Bracketed by the normal approximation critical + t_power (too small at few df) and twice it."""
    guess = critical + stats.t.ppf(power, df)
    return optimize.brentq(lambda nc: stats.nct.sf(critical, df, nc) - power, 0.5 * guess, 2.0 * guess)


def input_clusters(records: Sequence[dict], keys: Sequence[tuple[str, str]]) -> np.ndarray | None:
    """The input of each example of ``keys`` ((task, id), as `aligned_scores` orders them) as cluster
    indices (N,), when the records name their input (``"input"``) and some input is shared by several
    examples; None otherwise (every example its own input: the per-task formula)."""
    inputs = {(r["task"], str(r["id"])): r.get("input") for r in records}
    values = [inputs.get(k) for k in keys]
    if any(v is None for v in values) or len(set(values)) == len(values):
        return None
    _, index = np.unique(np.array(values, dtype=object).astype(str), return_inverse=True)
    return index


def aligned_scores(
    runs: Sequence[Sequence[dict]], metric: str = "rougeL"
) -> tuple[list[tuple[str, str]], np.ndarray]:
    """(keys, scores (S, N)) from one list of prediction records per seed, examples keyed (task, id) in
    sorted order; every seed must hold the same examples."""
    tables = [{(r["task"], str(r["id"])): float(r[metric]) for r in records} for records in runs]
    keys = sorted(tables[0])
    for table in tables[1:]:
        if set(table) != set(keys):
            raise ValueError("the seeds were scored on different test examples (same data settings needed)")
    return keys, np.array([[table[k] for k in keys] for table in tables])


def paired_interval(
    method: Sequence[Sequence[dict]],
    reference: Sequence[Sequence[dict]],
    metric: str = "rougeL",
    level: float = LEVEL,
) -> dict:
    """Mean over tasks of (method - reference) with its seed- and example-aware interval, from one list
    of prediction records per seed on each side (seed s of one paired with seed s of the other).

    Returns {"mean", "ci95": [low, high], "seeds", "examples", "tasks", "df", "std_error", "interval",
    "resolvable", "power"}: the counts that the interval rests on travel with it, and the smallest
    difference it resolves at ``power`` (`resolvable_difference`)."""
    if len(method) != len(reference):
        raise ValueError(
            f"pairing by seed needs as many seeds on both sides, got {len(method)} and {len(reference)}"
        )
    keys, a = aligned_scores(method, metric)
    ref_keys, b = aligned_scores(reference, metric)
    if keys != ref_keys:
        raise ValueError("both sides must be scored on the same test examples (same data settings)")
    names = sorted({task for task, _ in keys})
    task_index = np.array([names.index(task) for task, _ in keys])
    clusters = input_clusters(method[0], keys)
    out = interval_arrays(a - b, task_index, level, clusters)
    # one seed: no seed variance measured, so no claim about what a rerun would resolve
    resolvable = (
        resolvable_difference(float(out["std_error"]), float(out["df"]), level) if len(method) > 1 else None
    )
    return {
        "mean": float(out["mean"]),
        "ci95": [float(out["low"]), float(out["high"])],
        "seeds": len(method),
        "examples": len(keys),
        "inputs": len(keys) if clusters is None else int(clusters.max()) + 1,
        "tasks": len(names),
        "df": float(out["df"]),
        "std_error": float(out["std_error"]),
        "interval": METHOD,
        "resolvable": resolvable["resolvable"] if resolvable else None,
        "power": POWER,
    }


def describe(result: dict) -> str:
    """``+1.23 [-0.50, +2.96] (n = 24 examples x 3 seeds)``: an interval never printed without its counts."""
    low, high = result["ci95"]
    return f"{result['mean']:+.2f} [{low:+.2f}, {high:+.2f}] {_counts(result)}"


def describe_resolvable(result: dict | None) -> str:
    """``>= 1.90 (n = 24 examples x 3 seeds)``: the smallest difference a `paired_interval` result resolves
    (at `POWER`), with its counts; ``-`` where there is none (no result, or no standard error). A result
    written before this field existed (an older sweep.json) gets it from its std_error and df."""
    if not result:
        return "-"
    value = result.get("resolvable")
    if value is None and "resolvable" not in result:
        computed = resolvable_difference(result.get("std_error"), result.get("df"))
        value = computed["resolvable"] if computed else None
    if value is None or value != value:
        return "-"
    return f"≥ {value:.2f} {_counts(result)}"


def _counts(result: dict) -> str:
    """``(n = 400 examples x 5 seeds)``; ``(n = 400 examples in 100 inputs x 5 seeds)`` where examples share
    inputs; one seed: ``(n = 400 examples x 1 seed; examples only)``: its interval leaves out the seeds."""
    seeds, examples = result["seeds"], result["examples"]
    inputs = result.get("inputs", examples)
    where = f"{examples} examples" + (f" in {inputs} inputs" if inputs != examples else "")
    only = "; examples only" if seeds == 1 else ""
    return f"(n = {where} x {seeds} seed{'s' if seeds != 1 else ''}{only})"
