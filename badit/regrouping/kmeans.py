"""Balanced spherical k-means: K clusters of exactly `size` unit vectors each.

Spherical k-means (Dhillon & Modha, 2001) scores a point by its cosine to the cluster centroid and
re-normalises centroids onto the sphere. The size constraint is solved exactly, at every iteration,
as a linear assignment problem: each cluster is replicated into `size` slots and
`scipy.optimize.linear_sum_assignment` gives the assignment of points to slots of maximal total
cosine (the public BADIT code instead fills under-full groups at random, duplicating and dropping
components). Written by hand because neither scipy nor scikit-learn offers a size-constrained
spherical k-means; the problems here are tiny (K*r points, e.g. 24), so restarts are cheap.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment


@dataclass(frozen=True)
class Clustering:
    """Result of a balanced spherical k-means."""

    labels: np.ndarray  # (n,) cluster of each point
    centroids: np.ndarray  # (K, d) unit-norm centroids (a cluster of zero vectors has a zero centroid)
    objective: float  # sum_j (1 - cos(x_j, centroid of its cluster)); lower is better


def balanced_assignment(similarity: np.ndarray, size: int) -> np.ndarray:
    """Labels maximising sum_j similarity[j, label_j] with every cluster holding exactly `size` points.

    similarity: (n, K) with n == K * size. Exact (Hungarian algorithm on the (n, K*size) slot matrix);
    deterministic for a given input, so every process computing it on the same data agrees.
    """
    n, k = similarity.shape
    if n != k * size:
        raise ValueError(f"balanced_assignment: {n} points cannot fill {k} clusters of exactly {size}")
    slots = np.repeat(similarity, size, axis=1)  # column c*size + i is slot i of cluster c
    rows, cols = linear_sum_assignment(slots, maximize=True)
    labels = np.empty(n, dtype=np.int64)
    labels[rows] = cols // size
    return labels


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit norm; zero rows stay zero."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def cluster_centroids(x: np.ndarray, labels: np.ndarray, num_clusters: int) -> np.ndarray:
    """(K, d) unit-norm mean direction of each cluster."""
    one_hot = np.eye(num_clusters, dtype=x.dtype)[labels]  # (n, K)
    return unit_rows(one_hot.T @ x)


def spherical_objective(x: np.ndarray, labels: np.ndarray, centroids: np.ndarray) -> float:
    """sum_j (1 - cos(x_j, c_{label_j})) for unit-norm (or zero) rows x."""
    return float(np.sum(1.0 - np.einsum("nd,nd->n", x, centroids[labels])))


def _kmeans_plus_plus(x: np.ndarray, num_clusters: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding (Arthur & Vassilvitskii, 2007) with the chordal distance on the sphere."""
    centers = [int(rng.integers(len(x)))]
    for _ in range(1, num_clusters):
        nearest = np.max(x @ x[centers].T, axis=1)  # cosine to the closest chosen center
        weights = np.clip(2.0 - 2.0 * nearest, 0.0, None)  # squared chordal distance
        total = weights.sum()
        probs = weights / total if total > 0 else np.full(len(x), 1.0 / len(x))
        centers.append(int(rng.choice(len(x), p=probs)))
    return x[centers]


def _lloyd(x: np.ndarray, centroids: np.ndarray, size: int, iters: int) -> Clustering:
    """Alternate exact balanced assignment and centroid update until the labels stop changing."""
    labels = balanced_assignment(x @ centroids.T, size)
    centroids = cluster_centroids(x, labels, len(centroids))
    for _ in range(iters - 1):
        new_labels = balanced_assignment(x @ centroids.T, size)
        if np.array_equal(new_labels, labels):
            break
        labels = new_labels
        centroids = cluster_centroids(x, labels, len(centroids))
    return Clustering(labels, centroids, spherical_objective(x, labels, centroids))


def balanced_spherical_kmeans(
    x: np.ndarray,
    num_clusters: int,
    size: int,
    *,
    init_labels: np.ndarray | None = None,
    iters: int = 20,
    restarts: int = 4,
    seed: int = 0,
) -> Clustering:
    """Cluster the rows of x (unit norm, or zero) into `num_clusters` groups of exactly `size`.

    Runs Lloyd iterations from the centroids of `init_labels` (the current grouping, if given) and from
    `restarts` k-means++ seedings drawn from a fixed seed, and keeps the lowest objective (ties go to
    the earlier start, i.e. to the current grouping). Deterministic for a given input.
    """
    if x.shape[0] != num_clusters * size:
        raise ValueError(f"balanced_spherical_kmeans: expected {num_clusters * size} rows, got {x.shape[0]}")
    if init_labels is None and restarts < 1:
        raise ValueError("balanced_spherical_kmeans: give init_labels or at least one restart")
    rng = np.random.default_rng(seed)
    starts = [cluster_centroids(x, init_labels, num_clusters)] if init_labels is not None else []
    starts += [_kmeans_plus_plus(x, num_clusters, rng) for _ in range(restarts)]
    best = None
    for centroids in starts:
        result = _lloyd(x, centroids, size, iters)
        if best is None or result.objective < best.objective - 1e-9:
            best = result
    return best
