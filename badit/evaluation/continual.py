"""Aggregates over tasks: multi-task interference and continual-learning metrics.

Continual metrics follow Lopez-Paz & Ranzato (2017, GEM) and Chaudhry et al. (2018) for forgetting.
R is the T x T score matrix: R[i][j] = score on task j after training stage i (tasks in training
order, stage i = after learning task i), b[j] = the untrained (base) model's score on task j:

    AP  = 1/T       * sum_{j=0}^{T-1} R[T-1][j]                           (average final performance)
    F   = 1/(T-1)   * sum_{j=0}^{T-2} ( max_{i=0}^{T-2} R[i][j] - R[T-1][j] )  (forgetting, >= 0 is worse)
    BWT = 1/(T-1)   * sum_{j=0}^{T-2} ( R[T-1][j] - R[j][j] )             (backward transfer, < 0: forgetting)
    FWT = 1/(T-1)   * sum_{j=1}^{T-1} ( R[j-1][j] - b[j] )                (forward transfer)

F, BWT and FWT need T >= 2 (None otherwise); FWT needs `base` and the entries just above the diagonal.
The max in F runs over all stages i <= T-2 as written (stages before task j was learnt included; NaN
entries there, i.e. tasks not evaluated before they were learnt, are skipped).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def mean_over_tasks(scores: Mapping[str, float]) -> float:
    """Unweighted mean of per-task scores (every task counts once, whatever its size)."""
    if not scores:
        raise ValueError("no task scores to average")
    return float(np.mean(list(scores.values())))


def interference_score(multi_task: Mapping[str, float], single_task: Mapping[str, float]) -> float:
    """mean_t multi_task[t] - mean_t single_task[t] over the same tasks; negative = interference."""
    if set(multi_task) != set(single_task):
        raise ValueError(
            "interference needs scores for the same tasks; only multi-task: "
            f"{sorted(set(multi_task) - set(single_task))}, only single-task: {sorted(set(single_task) - set(multi_task))}"
        )
    return mean_over_tasks(multi_task) - mean_over_tasks(single_task)


def continual_metrics(scores: Sequence[Sequence[float]], base: Sequence[float] | None = None) -> dict:
    """AP, forgetting, BWT and FWT (formulas in the module docstring) of a T x T score matrix.

    Entries never used by a formula may be NaN (e.g. the upper triangle when FWT is not needed)."""
    R = np.asarray(scores, dtype=float)
    if R.ndim != 2 or R.shape[0] != R.shape[1] or R.shape[0] == 0:
        raise ValueError(f"the score matrix must be T x T with T >= 1, got shape {R.shape}")
    T = R.shape[0]
    final = R[T - 1]
    out = {"AP": float(final.mean()), "forgetting": None, "BWT": None, "FWT": None}
    if T >= 2:
        seen = np.arange(T - 1)
        out["forgetting"] = float((np.nanmax(R[: T - 1, : T - 1], axis=0) - final[seen]).mean())
        out["BWT"] = float((final[seen] - R[seen, seen]).mean())
        if base is not None:
            b = np.asarray(base, dtype=float)
            if b.shape != (T,):
                raise ValueError(f"base must hold one score per task ({T}), got shape {b.shape}")
            upper = R[np.arange(T - 1), np.arange(1, T)]  # R[j-1][j] for j = 1..T-1
            out["FWT"] = float((upper - b[1:]).mean())
    return {k: (None if v is not None and np.isnan(v) else v) for k, v in out.items()}
