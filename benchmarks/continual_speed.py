"""Per-step cost of the continual methods (O-LoRA, InfLoRA, GainLoRA) against LoRA, on a whole model.

Usage:
    python benchmarks/continual_speed.py [--tasks 4] [--batch 4] [--seq 256] [--repeats 5]
                                         [--device cuda] [--layers 30]

A random-weight Llama of SmolLM2-135M's shapes (hidden 576, intermediate 1536, 9 heads / 3 KV heads;
``--layers`` of them, no download), LoRA on q_proj, v_proj, gate_proj, rank K*r = 24 per branch. Each
continual model is at its ``--tasks``-th stage: ``tasks - 1`` frozen branches and a new one (rank
24 * tasks), grown the way a continual run grows it (`build_continual_model` from the previous stage's
saved folder). One step = forward + the method's loss term + backward, as the Trainer runs it (no
optimizer step; the continual methods add there only the restore of the frozen slices and GainLoRA's
gate projection, both O(parameters)). ``lora`` is one rank-24 adapter (its first stage). Not run on
the shared CPU machine the project is built on: numbers there would measure the other jobs.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import torch
from bench import interleaved_times, parser, smollm2_shaped, timed
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

from badit.training.continual import build_continual_model, olora_penalty
from badit.training.methods import MethodConfig, build_peft_config
from badit.training.trainer import build_adapter_model, save_adapter

TARGETS = ["q_proj", "v_proj", "gate_proj"]


def base_model(layers: int, device: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return smollm2_shaped(layers, tie_word_embeddings=False).to(device)


def method(name: str, **fields) -> MethodConfig:
    return MethodConfig(
        name=name, r=4, num_experts=6, top_k=6, lora_dropout=0.05, target_modules=TARGETS, **fields
    )


def staged_model(m: MethodConfig, tasks: int, layers: int, device: str):
    """``m``'s model at stage ``tasks`` (earlier stages saved and reloaded as a continual run does)."""
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>"))
    )
    with tempfile.TemporaryDirectory() as folder:
        previous = None
        for stage in range(tasks):
            model = build_continual_model(base_model(layers, "cpu"), m, seed=stage, init_adapter=previous)
            if stage < tasks - 1:
                previous = Path(folder) / f"stage{stage}"
                save_adapter(model, tokenizer, previous)
    return model.to(device)


def step_time(model, m: MethodConfig | None, batch: dict) -> float:
    def step() -> None:
        loss = model(**batch).loss
        if m is not None and m.name == "o-lora":
            loss = loss + olora_penalty(model, model.continual_state, m.orthogonality_weight, m.l2_weight)
        loss.backward()
        model.zero_grad(set_to_none=True)

    model.train()
    return timed(step, batch["input_ids"].device.type)


def main() -> None:
    options = parser(__doc__, batch=4)
    options.add_argument("--tasks", type=int, default=4)
    options.add_argument("--layers", type=int, default=30)
    options.add_argument("--device", default="cpu")
    args = options.parse_args()
    lora = build_adapter_model(base_model(args.layers, "cpu"), build_peft_config(method("lora")), 0).to(
        args.device
    )
    models = {"lora": (lora, None)}
    for name, fields in (("o-lora", {}), ("inflora", {}), ("gainlora", {"gainlora_base": "inflora"})):
        m = method(name, **fields)
        models[name] = (staged_model(m, args.tasks, args.layers, args.device), m)
    ids = torch.randint(0, 49152, (args.batch, args.seq), device=args.device)
    labels = ids.clone()
    labels[:, : args.seq // 2] = -100  # the first half is the prompt
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    steps = {
        name: (lambda model=model, m=m: step_time(model, m, batch)) for name, (model, m) in models.items()
    }
    times = interleaved_times(steps, args.repeats)
    base = statistics.median(times["lora"])
    print(f"{args.layers} layers, batch {args.batch} x {args.seq}, stage {args.tasks}, {args.device}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:>9} {median * 1e3:9.1f} ms   x{median / base:.2f} of lora")


if __name__ == "__main__":
    main()
