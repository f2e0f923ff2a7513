"""Forward + backward time of a BADIT layer against a plain LoRA layer of rank K*r on the same shapes.

Usage:
    python benchmarks/adapter_speed.py [--batch 4] [--seq 256] [--repeats 5] [--shapes 576x1536 4096x11008]
                                       [--device cuda] [--dtype bfloat16]

Both wrap the same frozen nn.Linear (in -> out), use dropout 0.05 and train mode; the input requires grad,
as it does inside a model. BADIT routes on the first half of each sequence (a prompt mask) and has
regrouping's gradient tracking attached, as training runs it. Target: the BADIT/LoRA ratio <= 1.2.
"""

from __future__ import annotations

import statistics

import torch
from bench import interleaved_times, parser, timed
from peft import LoraConfig
from peft.tuners.lora import Linear as LoraLinear
from torch import nn

from badit.adapter.config import BaditConfig
from badit.adapter.layer import BaditLinear
from badit.adapter.routing import RoutingState
from badit.regrouping import attach_gradient_tracking


def frozen_linear(in_features: int, out_features: int) -> nn.Linear:
    layer = nn.Linear(in_features, out_features, bias=False)
    layer.weight.requires_grad_(False)
    return layer


def step_time(layer: nn.Module, x: torch.Tensor) -> float:
    def step() -> None:
        with torch.autocast(x.device.type, dtype=x.dtype, enabled=x.dtype != torch.float32):
            out = layer(x)
        out.float().square().mean().backward()

    return timed(step, x.device.type)


def compare(
    in_features: int,
    out_features: int,
    batch: int,
    seq: int,
    repeats: int,
    device: str = "cpu",
    dtype=torch.float32,
) -> tuple[float, float]:
    """Median seconds of BADIT and LoRA. With a half ``dtype`` the frozen weight and input are in that
    dtype under autocast, the adapter weights stay float32, as `badit train` runs mixed precision."""
    config = BaditConfig(r=4, num_experts=6, lora_alpha=32, lora_dropout=0.05, init="random", regroup=True)
    rank = config.r * config.num_experts
    badit_layer = BaditLinear(
        frozen_linear(in_features, out_features).to(device, dtype), "default", config, layer_name="bench"
    ).to(device)
    assert attach_gradient_tracking(badit_layer) == 1  # gradient windows on, as in training
    state = RoutingState()
    state.prompt_mask = (torch.arange(seq).expand(batch, seq) < seq // 2).to(device)
    badit_layer.routing_state = state
    lora_config = LoraConfig(r=rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout)
    lora_layer = LoraLinear(
        frozen_linear(in_features, out_features).to(device, dtype),
        "default",
        lora_config,
        r=rank,
        lora_alpha=config.lora_alpha,
    ).to(device)
    for layer in (badit_layer, lora_layer):  # adapter weights in float32, as training keeps them
        for parameter in layer.parameters():
            if parameter.requires_grad:
                parameter.data = parameter.data.float()
    x = torch.randn(batch, seq, in_features, device=device, dtype=dtype, requires_grad=True)
    steps = {
        name: (lambda layer=layer: step_time(layer, x))
        for name, layer in (("badit", badit_layer), ("lora", lora_layer))
    }
    times = interleaved_times(steps, repeats)
    return statistics.median(times["badit"]), statistics.median(times["lora"])


def main() -> None:
    options = parser(__doc__, batch=4)
    options.add_argument("--shapes", nargs="+", default=["576x1536", "4096x11008"])
    options.add_argument("--device", default="cpu")
    options.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = options.parse_args()
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    print(
        f"batch {args.batch} x {args.seq} tokens, K*r = 24, {args.device} {args.dtype}, "
        f"{torch.get_num_threads()} threads, forward+backward"
    )
    for shape in args.shapes:
        in_features, out_features = (int(v) for v in shape.split("x"))
        badit_time, lora_time = compare(
            in_features, out_features, args.batch, args.seq, args.repeats, args.device, dtype
        )
        print(
            f"{in_features:>5} -> {out_features:<6} BADIT {badit_time * 1e3:8.1f} ms   LoRA {lora_time * 1e3:8.1f} ms   "
            f"ratio {badit_time / lora_time:.2f} (target <= 1.2)"
        )


if __name__ == "__main__":
    main()
