"""Time of one training step (forward + backward through ``BaditTrainer.training_step``) of each method,
against lora, on a random-weight Llama with SmolLM2-135M's shapes, and PCGrad's overhead.

Usage:
    python benchmarks/method_speed.py [--methods lora badit hydralora] [--surgery none pcgrad]
    python benchmarks/method_speed.py --methods lora badit badit:gate=components,router_input=raw --surgery none
                                      [--tasks 4] [--batch 8] [--seq 256] [--layers 30] [--repeats 5]
                                      [--device cuda] [--dtype bfloat16]

Every method at its defaults (r=4, K=6: rank 24 for the LoRA family, target gate_proj), dropout 0.05,
train mode; the batch holds ``--tasks`` tasks (``--batch / --tasks`` sequences each, first half of
each sequence the prompt). PCGrad makes one forward and backward pass per task present (T = --tasks)
plus the projection (T (T - 1) dot products over the trainable parameters). Runs are interleaved so
that machine load affects all alike; the first round is a warm-up. Prints medians and the ratio to
lora without surgery.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

import torch
from bench import interleaved_times, parser, smollm2_shaped, timed
from transformers import TrainingArguments

from badit.training.methods import MethodConfig, build_peft_config
from badit.training.trainer import BaditTrainer, build_adapter_model


def batch_of(tasks: int, batch: int, seq: int, device: str) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, 49152, (batch, seq), generator=generator)
    labels = input_ids.clone()
    labels[:, : seq // 2] = -100
    return {
        "input_ids": input_ids.to(device),
        "attention_mask": torch.ones_like(input_ids).to(device),
        "labels": labels.to(device),
        "task_ids": (torch.arange(batch) % tasks).to(device),
    }


def method_config(spec: str) -> MethodConfig:
    """``name`` or ``name:field=value,...`` (e.g. ``badit:gate=components,router_input=raw``, the paper's
    routing forward) as a MethodConfig."""
    name, _, fields = spec.partition(":")
    options = dict(item.split("=", 1) for item in fields.split(",") if item)
    return MethodConfig(name=name, **options)


def trainer_for(method: str, surgery: str, args: argparse.Namespace, output_dir: str):
    torch.manual_seed(0)
    base = smollm2_shaped(args.layers).to(args.device, getattr(torch, args.dtype))
    model = build_adapter_model(base, build_peft_config(method_config(method)), seed=0)
    model.to(args.device)
    training = TrainingArguments(
        output_dir=output_dir, report_to=[], use_cpu=args.device == "cpu", bf16=args.dtype == "bfloat16"
    )
    trainer = BaditTrainer(model=model, args=training, gradient_surgery=surgery)
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer's loop, which is not run here
    return trainer, model


def step_time(trainer: BaditTrainer, model, batch: dict, device: str) -> float:
    elapsed = timed(lambda: trainer.training_step(model, dict(batch)), device)
    model.zero_grad(set_to_none=True)
    return elapsed


def main() -> None:
    options = parser(__doc__, batch=8)
    options.add_argument("--methods", nargs="+", default=["lora", "badit", "hydralora"])
    options.add_argument("--surgery", nargs="+", default=["none", "pcgrad"])
    options.add_argument("--tasks", type=int, default=4)
    options.add_argument("--layers", type=int, default=30)
    options.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    options.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = options.parse_args()
    batch = batch_of(args.tasks, args.batch, args.seq, args.device)
    runs = {}
    with tempfile.TemporaryDirectory() as output_dir:
        for method in args.methods:
            for surgery in args.surgery:
                runs[(method, surgery)] = trainer_for(method, surgery, args, output_dir)
        steps = {
            key: (lambda trainer=trainer, model=model: step_time(trainer, model, batch, args.device))
            for key, (trainer, model) in runs.items()
        }
        times = interleaved_times(steps, args.repeats)
    print(
        f"{args.layers} layers, batch {args.batch} x {args.seq} tokens, {args.tasks} tasks, {args.device} "
        f"{args.dtype}, {torch.get_num_threads()} threads, one training step (forward + backward)"
    )
    reference = statistics.median(times.get(("lora", "none"), next(iter(times.values()))))
    for (method, surgery), values in times.items():
        median = statistics.median(values)
        print(f"{method:>42} surgery={surgery:<7} {median * 1e3:9.1f} ms   x{median / reference:.2f} of lora")


if __name__ == "__main__":
    main()
