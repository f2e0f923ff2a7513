"""From component gradient directions to a regroup permutation and its statistics (pure numpy)."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from badit.regrouping.kmeans import (
    balanced_assignment,
    balanced_spherical_kmeans,
    cluster_centroids,
    similarity,
    unit_rows,
)
from badit.regrouping.matching import current_experts, match_clusters_to_experts, permutation_from_targets

# Cosine bonus for staying in the current expert in the final assignment: it only breaks (near-)ties
# in favour of not moving.
STAY_BONUS = 1e-6
# A component that received no gradient in the window (e.g. an expert that top-k routing never chose)
# has no direction: it keeps its expert. A bonus above the largest possible cosine gain (2) pins it.
PIN_BONUS = 4.0
# k-means++ restarts besides the start from the current grouping. Axial (|cos|) clustering has more
# local optima than signed (x and -x pull one centroid); with 4 restarts it missed the planted groups
# of 1 of the 5 synthetic layers in tests/test_regroup_math.py, with 8 it finds all. A restart costs
# a few (K*r x K*r) assignment problems, negligible next to a training step.
RESTARTS = 8


@dataclass(frozen=True)
class RegroupPlan:
    """perm: new component j = old component perm[j]; stats: see `grouping_stats`."""

    perm: np.ndarray
    stats: dict[str, float]


def grouping_stats(
    directions: np.ndarray, perm: np.ndarray, num_experts: int, size: int, signed: bool = True
) -> dict[str, float]:
    """Statistics of the grouping in which expert e holds components perm[e*size:(e+1)*size].

    intra_cosine: mean cosine between a component's direction and its expert's centroid.
    inter_cosine: mean cosine between the centroids of two different experts.
    kmeans_objective: sum over components of (1 - that cosine), the spherical k-means loss.
    moved: number of components whose expert differs from the identity grouping.
    Not ``signed``: |cos| and axial centroids throughout (`badit.regrouping.kmeans`), so that no
    statistic depends on the components' signs.
    """
    x = unit_rows(directions)
    experts = np.empty(len(perm), dtype=np.int64)
    experts[perm] = current_experts(num_experts, size)  # expert that old component i ends up in
    centroids = cluster_centroids(x, experts, num_experts, signed)
    cos_own = np.einsum("nd,nd->n", x, centroids[experts])
    cos_own = cos_own if signed else np.abs(cos_own)
    gram = similarity(centroids, centroids, signed)
    off_diagonal = ~np.eye(num_experts, dtype=bool)
    return {
        "intra_cosine": float(cos_own.mean()),
        "inter_cosine": float(gram[off_diagonal].mean()),
        "kmeans_objective": float(np.sum(1.0 - cos_own)),
        "moved": int(np.count_nonzero(experts != current_experts(num_experts, size))),
    }


def random_plan(directions: np.ndarray, num_experts: int, size: int, signed: bool = False) -> RegroupPlan:
    """The random-permutation control (``regroup_assignment="random"``): components dealt to experts by a
    uniformly random permutation instead of by gradient direction, with the same statistics as
    `plan_regroup`. The draw is seeded by the window's gradients (their CRC-32), so a rerun, a resumed
    run and every process of a distributed run draw the same permutation. What regrouping buys beyond
    moving components at all is badit minus this control."""
    x = unit_rows(np.asarray(directions, dtype=np.float64))
    seed = zlib.crc32(np.ascontiguousarray(x).tobytes())
    perm = np.random.default_rng(seed).permutation(len(x))
    stats = grouping_stats(x, perm, num_experts, size, signed)
    before = grouping_stats(x, np.arange(len(x)), num_experts, size, signed)
    return RegroupPlan(
        perm,
        {
            **stats,
            "intra_cosine_before": before["intra_cosine"],
            "inter_cosine_before": before["inter_cosine"],
        },
    )


def plan_regroup(
    directions: np.ndarray,
    num_experts: int,
    size: int,
    *,
    kmeans_iters: int = 20,
    restarts: int = RESTARTS,
    signed: bool = False,
) -> RegroupPlan:
    """Regroup K*size components (rows of `directions`) into K experts of `size` by gradient direction.

    Balanced spherical k-means, clusters matched to the current experts by overlap, then one last exact
    balanced assignment to the matched centroids in which ties are broken towards staying put and
    components without gradient signal (zero rows) keep their expert. ``signed=False`` (default): a
    component is compared by |cos|, so flipping a component's sign (the same function, the negated
    gradient row) changes nothing; ``signed=True``: the published signed cosine.
    """
    x = unit_rows(np.asarray(directions, dtype=np.float64))
    experts = current_experts(num_experts, size)
    clustering = balanced_spherical_kmeans(
        x, num_experts, size, init_labels=experts, iters=kmeans_iters, restarts=restarts, signed=signed
    )
    mapping = match_clusters_to_experts(clustering.labels, experts, num_experts)
    centroids = np.empty_like(clustering.centroids)
    centroids[mapping] = clustering.centroids  # row e: centroid of the cluster that becomes expert e
    no_signal = ~x.any(axis=1)
    stay = np.eye(num_experts)[experts] * np.where(no_signal, PIN_BONUS, STAY_BONUS)[:, None]
    targets = balanced_assignment(similarity(x, centroids, signed) + stay, size)
    perm = permutation_from_targets(targets, size)
    stats = grouping_stats(x, perm, num_experts, size, signed)
    before = grouping_stats(x, np.arange(len(x)), num_experts, size, signed)
    stats["intra_cosine_before"] = before["intra_cosine"]
    stats["inter_cosine_before"] = before["inter_cosine"]
    return RegroupPlan(perm, stats)
