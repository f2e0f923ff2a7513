"""Turn a clustering of rank-1 components into a permutation that moves as few components as possible."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment


def current_experts(num_experts: int, size: int) -> np.ndarray:
    """Expert of each component in the packed layout: component j belongs to expert j // size."""
    return np.repeat(np.arange(num_experts), size)


def match_clusters_to_experts(labels: np.ndarray, experts: np.ndarray, num_experts: int) -> np.ndarray:
    """mapping[c] = the expert that cluster c becomes, maximising the number of components that stay.

    A linear assignment on the (cluster x expert) overlap counts, so each expert keeps as much of its
    membership as the clustering allows and each router row keeps most of its meaning.
    """
    overlap = np.zeros((num_experts, num_experts), dtype=np.int64)
    np.add.at(overlap, (labels, experts), 1)
    clusters, matched = linear_sum_assignment(overlap, maximize=True)
    mapping = np.empty(num_experts, dtype=np.int64)
    mapping[clusters] = matched
    return mapping


def permutation_from_targets(target_expert: np.ndarray, size: int) -> np.ndarray:
    """perm such that new component j = old component perm[j] and component i ends in target_expert[i].

    target_expert must hold every expert exactly `size` times. Components that keep their expert keep
    their slot; movers fill the slots vacated in their new expert in index order.
    """
    n = len(target_expert)
    counts = np.bincount(target_expert, minlength=n // size)
    if n % size or np.any(counts != size):
        raise ValueError(f"permutation_from_targets: every expert must receive exactly {size} components")
    movers = np.flatnonzero(target_expert != np.arange(n) // size)  # also the slots they vacate
    perm = np.arange(n)
    # Vacated slots are in index order, i.e. grouped by expert; sorting movers by destination aligns them.
    perm[movers] = movers[np.argsort(target_expert[movers], kind="stable")]
    return perm
