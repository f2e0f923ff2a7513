"""Randomized vs exact SVD for BADIT's initialisation: accuracy on SmolLM2's gate_proj, speed on 4096x11008.

Usage:
    python benchmarks/svd_init.py [--smollm2 DIR] [--skip-speed] [--oversample N] [--niter N]

DIR is a `save_pretrained` directory of SmolLM2 (safetensors; every `*gate_proj.weight` is checked).
Accuracy: for the top K*r = 24 triplets, the relative excess of the residual ||W - W_k||_F over the exact SVD's,
and the worst relative error of the singular values (targets: 1e-3 and 1e-2).
Speed: wall time of the exact and randomized SVD of a 4096x11008 float32 matrix (target: 20x).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from safetensors import safe_open

from badit.adapter.config import BaditConfig
from badit.adapter.svd import top_singular_triplets

RANK = 24  # K * r of the default config


def accuracy(
    weight: torch.Tensor, k: int, oversample: int, niter: int, exact: tuple | None = None
) -> tuple[float, float]:
    """(relative residual excess, worst relative singular value error) of randomized vs exact SVD."""
    w = weight.double()
    u, s, vh = (t.double() for t in (exact or top_singular_triplets(weight, k, "exact")))
    exact_residual = (w - (u * s) @ vh).norm()
    ur, sr, vhr = (t.double() for t in top_singular_triplets(weight, k, "randomized", oversample, niter))
    residual = (w - (ur * sr) @ vhr).norm()
    return ((residual - exact_residual) / exact_residual).item(), ((sr - s) / s).abs().max().item()


def realistic_matrix(out_features: int = 4096, in_features: int = 11008, spikes: int = 64) -> torch.Tensor:
    """Random matrix shaped like an LLM weight: a Marchenko-Pastur bulk plus a decaying set of outliers."""
    g = torch.Generator().manual_seed(0)
    bulk = torch.randn(out_features, in_features, generator=g) / in_features**0.5
    left = torch.randn(out_features, spikes, generator=g) / out_features**0.5
    right = torch.randn(spikes, in_features, generator=g) / in_features**0.5
    strengths = 2.0 + 20.0 * torch.arange(1, spikes + 1).float() ** -0.7
    return bulk + (left * strengths) @ right


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    defaults = BaditConfig()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--smollm2",
        type=Path,
        default=None,
        help="a SmolLM2 folder (default: the embedded model, converted once)",
    )
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--oversample", type=int, default=defaults.svd_oversample)
    parser.add_argument("--niter", type=int, default=defaults.svd_niter)
    args = parser.parse_args()
    torch.manual_seed(0)

    if args.smollm2 is None:
        from badit.training.model_loading import embedded_model_path

        args.smollm2 = embedded_model_path()
    weights_file = args.smollm2 / "model.safetensors"
    if weights_file.exists():
        with safe_open(str(weights_file), "pt") as f:
            names = sorted(n for n in f.keys() if n.endswith("gate_proj.weight"))
            results = [accuracy(f.get_tensor(n), RANK, args.oversample, args.niter) for n in names]
        print(
            f"SmolLM2 gate_proj, {len(names)} layers, top {RANK}, oversample={args.oversample} niter={args.niter}: "
            f"worst residual excess {max(r for r, _ in results):.2e} (target 1e-3), "
            f"worst singular value error {max(s for _, s in results):.2e} (target 1e-2)"
        )
    else:
        print(f"{weights_file} not found: skipping the SmolLM2 accuracy check")

    if not args.skip_speed:
        w = realistic_matrix()
        fast = timed(lambda: top_singular_triplets(w, RANK, "randomized", args.oversample, args.niter), 3)
        start = time.perf_counter()
        exact_triplets = top_singular_triplets(w, RANK, "exact")
        exact = time.perf_counter() - start
        residual, sv_error = accuracy(w, RANK, args.oversample, args.niter, exact_triplets)
        print(
            f"4096x11008 float32 on {torch.get_num_threads()} threads: exact {exact:.2f} s, randomized {fast:.3f} s "
            f"-> {exact / fast:.1f}x faster (target 20x); residual excess {residual:.1e}, "
            f"singular value error {sv_error:.1e}"
        )


if __name__ == "__main__":
    main()
