"""Balanced spherical k-means: K clusters of exactly `size` unit vectors each.

Spherical k-means (Dhillon & Modha, 2001) scores a point by its cosine to the cluster centroid and
re-normalises centroids onto the sphere. The size constraint is solved exactly, at every iteration,
as a linear assignment problem: each cluster is replicated into `size` slots and
`scipy.optimize.linear_sum_assignment` gives the assignment of points to slots of maximal total
cosine (the public BADIT code instead fills under-full groups at random, duplicating and dropping
components). Written by hand because neither scipy nor scikit-learn offers a size-constrained
spherical k-means; the problems here are tiny (K*r points, e.g. 24), so restarts are cheap.

``signed=False`` (badit's default) clusters *axes* rather than directions: a point's similarity to a
centroid is |cos|, so x and -x are the same point. A rank-1 component (a_j, b_j) and (-a_j, -b_j) are
the same function, and their gradient rows are each other's negatives; the SVD's (and the randomized
SVD's seed-dependent) sign convention must not decide the experts (docs/method.md, "Sign-invariant
regrouping"). The centroid of an axial cluster is the mean of its points each turned towards a
reference axis (the previous centroid in Lloyd's iterations, else the cluster's principal axis): for
fixed labels and signs that mean maximises sum |cos|, and re-choosing the signs cannot lower it, so
Lloyd's iterations still ascend the objective. This is the diametrical clustering of Dhillon, Marcotte
& Roshan (2003) with the mean of sign-aligned points in place of their eigenvector step.
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


def similarity(x: np.ndarray, centroids: np.ndarray, signed: bool = True) -> np.ndarray:
    """(n, K) cosines of unit (or zero) rows x to unit centroids; |cos| when not ``signed``."""
    cosines = x @ centroids.T
    return cosines if signed else np.abs(cosines)


def _principal_signs(x: np.ndarray, labels: np.ndarray, num_clusters: int) -> np.ndarray:
    """(n,) sign of each row along its cluster's principal axis (top eigenvector of sum x x^T).

    Computed on the cluster's (m, m) Gram matrix: if G u = lambda u, the principal axis is X^T u and
    x_j . X^T u = (G u)_j = lambda u_j, so the sign of row j is the sign of u_j. Flipping rows flips
    their u_j: the aligned rows s_j x_j only change by one sign per cluster.
    """
    signs = np.ones(len(x), dtype=x.dtype)
    for cluster in range(num_clusters):  # K tiny eigenproblems (m = size points each)
        members = np.flatnonzero(labels == cluster)
        if len(members) == 0:
            continue
        rows = x[members]
        _, vectors = np.linalg.eigh(rows @ rows.T)
        signs[members] = np.where(vectors[:, -1] < 0, -1.0, 1.0)
    return signs


def cluster_centroids(
    x: np.ndarray,
    labels: np.ndarray,
    num_clusters: int,
    signed: bool = True,
    reference: np.ndarray | None = None,
) -> np.ndarray:
    """(K, d) unit-norm mean direction of each cluster.

    Not ``signed``: the mean of the rows each turned towards ``reference`` (K, d) (the previous centroids)
    or, without one, towards the cluster's principal axis; the centroid's own sign is arbitrary."""
    one_hot = np.eye(num_clusters, dtype=x.dtype)[labels]  # (n, K)
    if not signed:
        if reference is None:
            signs = _principal_signs(x, labels, num_clusters)
        else:
            signs = np.where(np.einsum("nd,nd->n", x, reference[labels]) < 0, -1.0, 1.0)
        x = x * signs[:, None]
    return unit_rows(one_hot.T @ x)


def spherical_objective(
    x: np.ndarray, labels: np.ndarray, centroids: np.ndarray, signed: bool = True
) -> float:
    """sum_j (1 - cos(x_j, c_{label_j})) for unit-norm (or zero) rows x; |cos| when not ``signed``."""
    cosines = np.einsum("nd,nd->n", x, centroids[labels])
    return float(np.sum(1.0 - (cosines if signed else np.abs(cosines))))


def _kmeans_plus_plus(
    x: np.ndarray, num_clusters: int, rng: np.random.Generator, signed: bool = True
) -> np.ndarray:
    """k-means++ seeding (Arthur & Vassilvitskii, 2007) with the chordal distance on the sphere (between
    axes, i.e. to the nearer of +-c, when not ``signed``)."""
    centers = [int(rng.integers(len(x)))]
    for _ in range(1, num_clusters):
        nearest = np.max(similarity(x, x[centers], signed), axis=1)  # cosine to the closest chosen center
        weights = np.clip(2.0 - 2.0 * nearest, 0.0, None)  # squared chordal distance
        total = weights.sum()
        probs = weights / total if total > 0 else np.full(len(x), 1.0 / len(x))
        centers.append(int(rng.choice(len(x), p=probs)))
    return x[centers]


def _lloyd(x: np.ndarray, centroids: np.ndarray, size: int, iters: int, signed: bool = True) -> Clustering:
    """Alternate exact balanced assignment and centroid update until the labels stop changing."""
    labels = balanced_assignment(similarity(x, centroids, signed), size)
    centroids = cluster_centroids(x, labels, len(centroids), signed, reference=centroids)
    for _ in range(iters - 1):
        new_labels = balanced_assignment(similarity(x, centroids, signed), size)
        if np.array_equal(new_labels, labels):
            break
        labels = new_labels
        centroids = cluster_centroids(x, labels, len(centroids), signed, reference=centroids)
    return Clustering(labels, centroids, spherical_objective(x, labels, centroids, signed))


def balanced_spherical_kmeans(
    x: np.ndarray,
    num_clusters: int,
    size: int,
    *,
    init_labels: np.ndarray | None = None,
    iters: int = 20,
    restarts: int = 4,
    seed: int = 0,
    signed: bool = True,
) -> Clustering:
    """Cluster the rows of x (unit norm, or zero) into `num_clusters` groups of exactly `size`.

    Runs Lloyd iterations from the centroids of `init_labels` (the current grouping, if given) and from
    `restarts` k-means++ seedings drawn from a fixed seed, and keeps the lowest objective (ties go to
    the earlier start, i.e. to the current grouping). Deterministic for a given input. ``signed=False``
    clusters axes (|cos|; see the module docstring).
    """
    if x.shape[0] != num_clusters * size:
        raise ValueError(f"balanced_spherical_kmeans: expected {num_clusters * size} rows, got {x.shape[0]}")
    if init_labels is None and restarts < 1:
        raise ValueError("balanced_spherical_kmeans: give init_labels or at least one restart")
    rng = np.random.default_rng(seed)
    starts = [cluster_centroids(x, init_labels, num_clusters, signed)] if init_labels is not None else []
    starts += [_kmeans_plus_plus(x, num_clusters, rng, signed) for _ in range(restarts)]
    best = None
    for centroids in starts:
        result = _lloyd(x, centroids, size, iters, signed)
        if best is None or result.objective < best.objective - 1e-9:
            best = result
    return best
