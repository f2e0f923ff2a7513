"""Top singular triplets of a weight matrix and the BADIT expert factors built from them."""

from __future__ import annotations

import torch

# Matrices up to this many entries (tiny test models) are decomposed in float64; larger ones in float32,
# which meets the accuracy targets (benchmarks/svd_init.py) at a fraction of the cost.
FLOAT64_MAX_NUMEL = 250_000


def top_singular_triplets(
    weight: torch.Tensor, k: int, method: str = "randomized", oversample: int = 40, niter: int = 10
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The k largest singular triplets of `weight` (out, in): U (out, k), S (k,), Vh (k, in), descending.

    Computed in float64 for small matrices and float32 otherwise, whatever the dtype of `weight`.
    "randomized" is the range finder with power iterations of Halko, Martinsson & Tropp (2011), as
    implemented by `torch.svd_lowrank` (QR re-orthonormalisation at every iteration), with `oversample` extra
    directions; "exact" is `torch.linalg.svd`.
    """
    if not 1 <= k <= min(weight.shape):
        raise ValueError(f"cannot take {k} singular triplets of a {tuple(weight.shape)} matrix")
    dtype = torch.float64 if weight.numel() <= FLOAT64_MAX_NUMEL else torch.float32
    w = weight.detach().to(dtype)
    if method == "exact":
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        return u[:, :k], s[:k], vh[:k]
    if method != "randomized":
        raise ValueError(f"unknown SVD method {method!r}: use 'randomized' or 'exact'")
    q = min(k + oversample, min(weight.shape))
    u, s, v = torch.svd_lowrank(w, q=q, niter=niter)
    return u[:, :k], s[:k], v[:, :k].T


def expert_factors(
    u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, scaling: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """BADIT factors A (k, in) and B (out, k) with scaling * B @ A = U diag(S) Vh.

    The singular values are split evenly between the two factors (B = U sqrt(S / scaling),
    A = sqrt(S / scaling) Vh), as in the paper; consecutive blocks of r components form the experts.
    """
    root = (s / scaling).sqrt()
    return root[:, None] * vh, u * root[None, :]
