"""Aggregates over tasks: multi-task interference and continual-learning metrics.

R is the T x T score matrix: R[i][j] = score on task j after training stage i (tasks in training
order, stage i = after learning task i); b[j] = the untrained (base) model's score on task j;
s[j] = the score of an adapter trained on task j alone (a ``setting: single`` run).

The headline names (AP, forgetting, BWT, FWT) follow SAPT's scoring script (Zhao et al., ACL 2024,
``score.py`` of github.com/circle-hit/SAPT), which O-LoRA, SAPT and GainLoRA report on the SuperNI
continual benchmark, so that badit's numbers can be put next to those papers':

    AP         = 1/T * sum_{j=0}^{T-1} R[T-1][j]                                (average performance)
    forgetting = 1/(T-1) * sum_{j=0}^{T-2} ( max_{i=j}^{T-2} R[i][j] - R[T-1][j] )  (F.Ra, >= 0 is worse)
    BWT        = 1/T * sum_{j=0}^{T-1} ( R[T-1][j] - R[j][j] )                  (the j = T-1 term is 0)
    FWT        = 1/T * sum_j R[j][j]  -  1/T * sum_j s[j]                        (needs the single-task run)

SAPT's matrix holds zeros above the diagonal, so its max over the stages before T-1 is in effect a max
over the stages after task j was learnt (i >= j), as written here. GEM's definitions (Lopez-Paz &
Ranzato, 2017) and Chaudhry et al.'s (2018) forgetting, as written, keep their own names:

    BWT_gem        = 1/(T-1) * sum_{j=0}^{T-2} ( R[T-1][j] - R[j][j] )
    FWT_gem        = 1/(T-1) * sum_{j=1}^{T-1} ( R[j-1][j] - b[j] )              (zero-shot transfer)
    forgetting_gem = 1/(T-1) * sum_{j=0}^{T-2} ( max_{i=0}^{T-2} R[i][j] - R[T-1][j] )  (every stage)

forgetting, BWT and the *_gem metrics need T >= 2 (None otherwise); FWT needs ``single``; FWT_gem needs
``base`` and the entries just above the diagonal. NaN entries (tasks not evaluated before they were
learnt) are skipped by the maxima.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

CONTINUAL_KEYS = ("AP", "forgetting", "BWT", "FWT")
"""SAPT's scoring (the continual-learning literature on SuperNI): what badit's tables lead with."""
GEM_KEYS = ("forgetting_gem", "BWT_gem", "FWT_gem")
"""GEM (Lopez-Paz & Ranzato 2017) / Chaudhry et al. (2018) as written: kept under their own names."""
DEFINITIONS = (
    "AP, forgetting, BWT, FWT as SAPT's score.py defines them (BWT over T tasks, FWT = mean diagonal - mean "
    "single-task score); *_gem: GEM's definitions (BWT over T-1 tasks, FWT = zero-shot R[j-1][j] - base)"
)


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


def _per_task(values: Sequence[float] | None, T: int, name: str) -> np.ndarray | None:
    if values is None:
        return None
    array = np.asarray(values, dtype=float)
    if array.shape != (T,):
        raise ValueError(f"{name} must hold one score per task ({T}), got shape {array.shape}")
    return array


def continual_metrics(
    scores: Sequence[Sequence[float]],
    base: Sequence[float] | None = None,
    single: Sequence[float] | None = None,
) -> dict:
    """SAPT's AP, forgetting, BWT, FWT and GEM's forgetting_gem, BWT_gem, FWT_gem (formulas in the module
    docstring) of a T x T score matrix; ``base`` and ``single`` hold one score per task in stage order.

    Entries never used by a formula may be NaN (e.g. the upper triangle when FWT_gem is not needed)."""
    R = np.asarray(scores, dtype=float)
    if R.ndim != 2 or R.shape[0] != R.shape[1] or R.shape[0] == 0:
        raise ValueError(f"the score matrix must be T x T with T >= 1, got shape {R.shape}")
    T = R.shape[0]
    b, s = _per_task(base, T, "base"), _per_task(single, T, "single")
    final, diagonal = R[T - 1], np.diagonal(R)
    out = dict.fromkeys(CONTINUAL_KEYS + GEM_KEYS)
    out["AP"] = float(final.mean())
    if s is not None:
        out["FWT"] = float(diagonal.mean() - s.mean())
    if T >= 2:
        seen = np.arange(T - 1)
        drop = final[seen] - diagonal[seen]  # R[T-1][j] - R[j][j], j < T-1
        out["BWT"] = float(drop.sum() / T)
        out["BWT_gem"] = float(drop.mean())
        earlier = R[: T - 1, : T - 1]  # stages 0..T-2 x tasks 0..T-2
        learnt = np.where(np.tril(np.ones_like(earlier, dtype=bool)), earlier, np.nan)  # stage i >= task j
        out["forgetting"] = float((np.nanmax(learnt, axis=0) - final[seen]).mean())
        out["forgetting_gem"] = float((np.nanmax(earlier, axis=0) - final[seen]).mean())
        if b is not None:
            upper = R[np.arange(T - 1), np.arange(1, T)]  # R[j-1][j] for j = 1..T-1
            out["FWT_gem"] = float((upper - b[1:]).mean())
    return {k: (None if v is not None and np.isnan(v) else v) for k, v in out.items()}
