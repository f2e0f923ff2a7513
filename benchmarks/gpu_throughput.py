"""Training throughput and peak memory of BADIT against LoRA on one GPU, at the paper's model shapes.

Usage (on a machine with a CUDA GPU):
    python benchmarks/gpu_throughput.py [--shapes llama-1b llama-8b] [--batch 8] [--seq 1024] [--steps 6]

The base model is a Llama of the named shape with random bfloat16 weights (the throughput of a
forward/backward does not depend on the values; no checkpoint download is needed). Each method gets
its own copy of the base, built the way `badit train` builds it (`build_peft_config` +
`build_adapter_model`: float32 adapter weights, regrouping's gradient windows attached for badit),
gradient checkpointing on, bf16 autocast, AdamW on the adapter, and the loss on the last 50 tokens
of each sequence (answer-only, as the paper's 974 + 50 token prompts). BADIT's steps pay for the
routing and the gradient windows; one regroup (k-means over every layer) after each timed round is
timed on its own, since how often it happens is a setting (`regroup_every`). Rounds alternate between
the methods so that clock and thermal drift affect both alike; the first round is warm-up. Ratios come
from the same run. Peak memory is read with every method's copy of the base resident.

Measured numbers go to docs/benchmarks.md with the card's name.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import badit
from badit.training.methods import MethodConfig, build_peft_config
from badit.training.trainer import build_adapter_model

# Shapes of public checkpoints (hidden, intermediate, layers, heads, kv heads, vocabulary).
SHAPES = {
    "tiny": (64, 128, 2, 4, 2, 1000),  # a smoke test of this script (runs on CPU too)
    "llama-1b": (2048, 8192, 16, 32, 8, 128256),  # Llama-3.2-1B
    "llama-3b": (3072, 8192, 28, 24, 8, 128256),  # Llama-3.2-3B
    "llama-8b": (4096, 14336, 32, 32, 8, 128256),  # Llama-3.1-8B
}
ANSWER_TOKENS = 50  # the paper's max target length
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def synchronize() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def base_model(shape: str) -> LlamaForCausalLM:
    hidden, intermediate, layers, heads, kv_heads, vocab = SHAPES[shape]
    config = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        vocab_size=vocab,
        max_position_embeddings=4096,
    )
    torch.manual_seed(0)
    with torch.device(DEVICE):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.requires_grad_(False)
    return model


def adapted(shape: str, method: str, targets: list[str]):
    start = time.perf_counter()
    model = build_adapter_model(
        base_model(shape), build_peft_config(MethodConfig(name=method, target_modules=targets)), seed=0
    )
    synchronize()
    init_seconds = time.perf_counter() - start
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    return model, optimizer, init_seconds


def timed_steps(model, optimizer, batch: dict, steps: int, regroup: bool) -> tuple[float, float]:
    """Seconds for ``steps`` optimizer steps, and for the regroup after them (0 without)."""
    synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    synchronize()
    steps_done = time.perf_counter()
    if regroup:
        badit.regroup(model, optimizer)
        synchronize()
    return steps_done - start, time.perf_counter() - steps_done


def measure(
    shape: str, methods: list[str], targets: list[str], batch: int, seq: int, steps: int, rounds: int
):
    vocab = SHAPES[shape][-1]
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, vocab, (batch, seq), generator=generator).to(DEVICE)
    labels = input_ids.clone()
    labels[:, : seq - ANSWER_TOKENS] = -100
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}
    models, result = {}, {"shape": shape, "targets": targets, "batch": batch, "seq": seq, "methods": {}}
    for method in methods:
        model, optimizer, init_seconds = adapted(shape, method, targets)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        models[method] = (model, optimizer)
        result["methods"][method] = {
            "init_s": round(init_seconds, 2),
            "trainable_params": trainable,
            "times": [],
        }
        print(f"{shape} {method}: adapter built in {init_seconds:.1f} s, {trainable:,} trainable", flush=True)
    for round_index in range(rounds + 1):
        for method in methods:
            model, optimizer = models[method]
            if DEVICE == "cuda":
                torch.cuda.reset_peak_memory_stats()
            seconds, regroup_seconds = timed_steps(model, optimizer, inputs, steps, regroup=method == "badit")
            if round_index == 0:  # warm-up
                continue
            entry = result["methods"][method]
            entry["times"].append(seconds)
            entry.setdefault("regroup_times", []).append(regroup_seconds)
            entry["peak_gib"] = (
                round(torch.cuda.max_memory_allocated() / 2**30, 2) if DEVICE == "cuda" else None
            )
    for method, entry in result["methods"].items():
        median = statistics.median(entry["times"])
        entry["tokens_per_s"] = round(batch * seq * steps / median)
        entry["regroup_s"] = round(statistics.median(entry["regroup_times"]), 3)
        print(
            f"{shape} {method}: {entry['tokens_per_s']:,} tokens/s (steps only), one regroup "
            f"{entry['regroup_s']} s, peak {entry['peak_gib']} GiB (both methods' bases resident)",
            flush=True,
        )
    if "badit" in methods and "lora" in methods:
        ratio = statistics.median(result["methods"]["badit"]["times"]) / statistics.median(
            result["methods"]["lora"]["times"]
        )
        result["badit_over_lora_time"] = round(ratio, 3)
        print(f"{shape}: BADIT / LoRA time per optimizer step = {ratio:.3f}", flush=True)
    del models
    gc.collect()
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shapes", nargs="+", default=["llama-1b", "llama-8b"], choices=sorted(SHAPES))
    parser.add_argument("--methods", nargs="+", default=["badit", "lora"])
    parser.add_argument("--targets", nargs="+", default=["gate_proj"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per timed round")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per method (after one warm-up)")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    device_name = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu"
    print(device_name, torch.__version__, flush=True)
    results = {"device": device_name, "torch": torch.__version__, "runs": []}
    for shape in args.shapes:
        try:
            results["runs"].append(
                measure(shape, args.methods, args.targets, args.batch, args.seq, args.steps, args.rounds)
            )
        except torch.cuda.OutOfMemoryError as error:  # report and go on with the next shape
            print(f"{shape}: out of memory ({error})", flush=True)
            results["runs"].append({"shape": shape, "error": "out of memory"})
            gc.collect()
            torch.cuda.empty_cache()
        if args.json:
            with open(args.json, "w") as file:
                json.dump(results, file, indent=1)


if __name__ == "__main__":
    main()
