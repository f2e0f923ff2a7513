"""Padding of training batches on SuperNI: positions computed / real tokens, shuffled vs length-grouped.

Counting only (no model runs): the tasks' training examples are tokenised as `badit train` does
(configs/superni_multitask.yaml: the paper's template, prompts up to 974 tokens, answers up to 50),
with the tokenizer of the embedded SmolLM2-135M-Instruct (converted into ~/.cache/badit/models on
first use), then one epoch is cut into batches by each sampler and each batch is padded to its
longest example, as badit's collator does.

    python benchmarks/padding.py [--data ../shared/data/superni] [--batch 8] [--tasks t1 t2 ...]
"""

from __future__ import annotations

import argparse
import json

from torch.utils.data import RandomSampler
from transformers import AutoTokenizer

from badit.data import LengthGroupedSampler, TaskBalancedSampler, tokenize_tasks
from badit.experiments.config import load_config
from badit.experiments.stage import data_source, load_run_tasks, prompt_template, task_names
from badit.training.model_loading import embedded_model_path


def padded_positions(order: list[int], lengths: list[int], batch: int) -> int:
    groups = [order[i : i + batch] for i in range(0, len(order), batch)]
    return sum(len(g) * max(lengths[i] for i in g) for g in groups)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default="../shared/data/superni")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tasks", nargs="*", default=None)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    overrides = [f"data.path={args.data}"] + ([f"data.tasks=[{','.join(args.tasks)}]"] if args.tasks else [])
    config = load_config("configs/superni_multitask.yaml", overrides)
    source = data_source(config)
    train, _ = load_run_tasks(config, task_names(config, source), source)
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_path())
    examples = tokenize_tasks(
        tokenizer,
        train,
        prompt_template(config.data),
        max_source_length=config.data.max_source_length,
        max_target_length=config.data.max_target_length,
    )
    lengths = [len(e["input_ids"]) for e in examples]
    task_ids = [e["task_id"] for e in examples]
    real = sum(lengths)
    samplers = {
        "shuffled": RandomSampler(range(len(lengths))),
        "length_grouped": LengthGroupedSampler(lengths, args.batch, seed=args.seed),
        "balanced_T2_length_grouped": LengthGroupedSampler(
            lengths, args.batch, seed=args.seed, base=TaskBalancedSampler(task_ids, 2.0, seed=args.seed)
        ),
    }
    result = {
        "tokenizer": str(embedded_model_path()),
        "tasks": len(train),
        "examples": len(lengths),
        "batch": args.batch,
        "mean_length": round(real / len(lengths), 1),
        "max_length": max(lengths),
    }
    for name, sampler in samplers.items():
        order = list(sampler)
        drawn = sum(lengths[i] for i in order)  # balanced draws: the real tokens of the draws
        result[f"{name}_positions_per_token"] = round(padded_positions(order, lengths, args.batch) / drawn, 4)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
