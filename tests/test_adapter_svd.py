"""SVD initialisation: exact and randomized top triplets, expert factors."""

import inspect

import pytest
import torch

from badit.adapter.config import BaditConfig
from badit.adapter.svd import expert_factors, top_singular_triplets


def matrix_with_spectrum(singular_values: torch.Tensor, rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    u = torch.linalg.qr(torch.randn(rows, len(singular_values), generator=g, dtype=torch.float64)).Q
    v = torch.linalg.qr(torch.randn(cols, len(singular_values), generator=g, dtype=torch.float64)).Q
    return ((u * singular_values) @ v.T).float()


@pytest.fixture(scope="module")
def flat_spectrum_matrix() -> tuple[torch.Tensor, torch.Tensor]:
    """640x480 float32 (decomposed in float32) whose spectrum decays slowly, like real MLP weights."""
    s = 1.0 / (1.0 + 0.01 * torch.arange(480, dtype=torch.float64)) ** 0.5
    return matrix_with_spectrum(s, 640, 480), s


def residual_and_sv_error(w: torch.Tensor, k: int, **kwargs) -> tuple[float, float]:
    exact_u, exact_s, exact_vh = top_singular_triplets(w, k, "exact")
    exact_residual = (w.double() - (exact_u.double() * exact_s.double()) @ exact_vh.double()).norm()
    u, s, vh = (t.double() for t in top_singular_triplets(w, k, **kwargs))
    residual = (w.double() - (u * s) @ vh).norm()
    return ((residual - exact_residual) / exact_residual).item(), (
        (s - exact_s.double()) / exact_s
    ).abs().max().item()


def test_exact_triplets_match_the_prescribed_spectrum(flat_spectrum_matrix):
    w, s = flat_spectrum_matrix
    u, sv, vh = top_singular_triplets(w, 24, "exact")
    assert u.shape == (640, 24) and sv.shape == (24,) and vh.shape == (24, 480)
    torch.testing.assert_close(sv.double(), s[:24], rtol=1e-5, atol=0)
    torch.testing.assert_close(u.T @ u, torch.eye(24, dtype=u.dtype), atol=1e-5, rtol=0)


def test_randomized_default_is_faithful_on_a_flat_spectrum(flat_spectrum_matrix):
    w, _ = flat_spectrum_matrix
    defaults = BaditConfig()
    residual_excess, sv_error = residual_and_sv_error(
        w, 24, method="randomized", oversample=defaults.svd_oversample, niter=defaults.svd_niter
    )
    # The function's own defaults are the config's, so direct callers get the same accuracy.
    signature = inspect.signature(top_singular_triplets).parameters
    assert (signature["oversample"].default, signature["niter"].default) == (
        defaults.svd_oversample,
        defaults.svd_niter,
    )
    assert -1e-6 < residual_excess < 1e-3  # Eckart-Young: no rank-24 matrix beats the exact SVD
    assert sv_error < 1e-2


def test_plain_svd_lowrank_settings_are_not_faithful_enough(flat_spectrum_matrix):
    # The test above can fail: torch.svd_lowrank's defaults (no oversampling, 2 iterations) miss the targets.
    w, _ = flat_spectrum_matrix
    residual_excess, sv_error = residual_and_sv_error(w, 24, method="randomized", oversample=0, niter=2)
    assert residual_excess > 1e-3 or sv_error > 1e-2


def test_small_matrices_are_decomposed_in_float64():
    w = matrix_with_spectrum(torch.linspace(3, 1, 32, dtype=torch.float64), 48, 40).to(torch.bfloat16)
    u, s, vh = top_singular_triplets(w, 8, "randomized")
    assert u.dtype == torch.float64
    reference = torch.linalg.svdvals(w.double())[:8]
    torch.testing.assert_close(s, reference, rtol=1e-5, atol=0)


def test_expert_factors_reproduce_the_top_components_and_are_orthogonal():
    w = matrix_with_spectrum(torch.linspace(5, 1, 40, dtype=torch.float64), 50, 40).double()
    u, s, vh = top_singular_triplets(w, 12, "exact")
    a, b = expert_factors(u, s, vh, scaling=8.0)
    torch.testing.assert_close(8.0 * b @ a, (u * s) @ vh)
    # Rows of A and columns of B are mutually orthogonal: every pair of experts is orthogonal.
    gram_a, gram_b = a @ a.T, b.T @ b
    torch.testing.assert_close(
        gram_a - torch.diag(gram_a.diagonal()), torch.zeros(12, 12, dtype=w.dtype), atol=1e-10, rtol=0
    )
    torch.testing.assert_close(
        gram_b - torch.diag(gram_b.diagonal()), torch.zeros(12, 12, dtype=w.dtype), atol=1e-10, rtol=0
    )
    torch.testing.assert_close(gram_a.diagonal(), s / 8.0)


def test_too_many_triplets_and_unknown_method_are_rejected():
    with pytest.raises(ValueError, match="cannot take 41 singular triplets of a \\(50, 40\\) matrix"):
        top_singular_triplets(torch.randn(50, 40), 41)
    with pytest.raises(ValueError, match="unknown SVD method 'qr'"):
        top_singular_triplets(torch.randn(50, 40), 4, "qr")
