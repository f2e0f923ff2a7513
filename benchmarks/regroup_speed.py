"""Time one `badit.regroup` of every target layer of SmolLM2-135M (30 gate_proj layers, 576 -> 1536).

    python benchmarks/regroup_speed.py [--layers 30] [--experts 6] [--rank 4] [--repeats 5] [--model /tmp/smol]

Uses the real SmolLM2-135M-Instruct gate_proj weights when --model points at a saved copy (a
transformers `save_pretrained` directory), random weights of the same shapes otherwise. Each timed
regroup follows a few AdamW steps, so gradient windows, `.grad` and Adam moments are all populated.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

import badit
from badit.adapter.layer import BaditLinear
from badit.regrouping import attach_gradient_tracking, summarize


def gate_projections(args: argparse.Namespace) -> list[nn.Linear]:
    if args.model != "random":
        from transformers import AutoModelForCausalLM

        from badit.training.model_loading import resolve_model_path

        model = AutoModelForCausalLM.from_pretrained(resolve_model_path(args.model), dtype=torch.float32)
        print(f"weights: {args.model}")
        return [layer.mlp.gate_proj for layer in model.model.layers][: args.layers]
    print("weights: random (SmolLM2-135M shapes)")
    torch.manual_seed(0)
    return [nn.Linear(576, 1536, bias=False) for _ in range(args.layers)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--experts", type=int, default=6)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--model", default="smollm2-135m-instruct", help="model folder or name; 'random' for random weights"
    )
    parser.add_argument("--device", default="cpu", help="e.g. cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    config = badit.BaditConfig(r=args.rank, num_experts=args.experts, top_k=args.experts, lora_dropout=0.0)
    layers = nn.ModuleList()
    for i, linear in enumerate(gate_projections(args)):
        linear.weight.requires_grad_(False)
        layers.append(BaditLinear(linear, "default", config, f"layers.{i}.mlp.gate_proj"))
    layers.to(args.device)
    attach_gradient_tracking(layers)
    optimizer = torch.optim.AdamW([p for p in layers.parameters() if p.requires_grad], lr=1e-3)
    x = torch.randn(4, 32, layers[0].in_features, generator=torch.Generator().manual_seed(0)).to(args.device)

    def train_steps(n: int) -> None:
        for _ in range(n):
            optimizer.zero_grad()
            sum(layer(x).pow(2).mean() for layer in layers).backward()
            optimizer.step()

    times = []
    for _ in range(args.repeats):
        train_steps(2)  # refill the gradient windows (a regroup starts a new one)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        stats = badit.regroup(layers, optimizer)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    summary = summarize(stats)
    print(
        f"regroup of {len(layers)} layers ({layers[0].in_features}->{layers[0].out_features}, "
        f"K={args.experts}, r={args.rank}, with AdamW state, {args.device}): median {statistics.median(times) * 1e3:.0f} ms, "
        f"min {min(times) * 1e3:.0f} ms over {args.repeats} runs; {torch.get_num_threads()} threads"
    )
    print(
        f"last regroup: {summary['moved']:.0f} components moved; intra cosine "
        f"{summary['intra_cosine_before']:.3f} -> {summary['intra_cosine']:.3f}, inter cosine "
        f"{summary['inter_cosine_before']:.3f} -> {summary['inter_cosine']:.3f}"
    )


if __name__ == "__main__":
    main()
