"""Why BADIT's routers did not route: the router's input and gradient at step 0, per routing forward.

For each routing forward (the paper's: whole experts gated, raw pooled prompt; gate=delta; gate=delta with the
standardized router input) on a run config's model and tasks (default: the interference benchmark), one batch
of training examples per task, at initialisation and optionally after a trained adapter is loaded:

- the pooled router input: the share of its energy common to every sequence, the task probe accuracy, and
  the massive features (the largest |mean feature| over the median one);
- the router gradient: its task-specific share (the rest pushes every task the same way);
- the first Adam step of the router: how far it moves the logits of an average sequence and how far apart
  it moves two tasks (the sign step lr * sign(g) on the mean pooled input and on the difference of two
  task means), at the config's learning rate.

Usage (prints a Markdown table; docs/method.md, "Routing", quotes it):
    python benchmarks/routing_diagnosis.py [CONFIG] [--examples 8]
"""

from __future__ import annotations

import argparse
import statistics

import torch

from badit.adapter.layer import BaditLinear
from badit.analysis.separability import router_separability
from badit.data import DataCollator
from badit.experiments.config import load_config
from badit.experiments.stage import (
    data_source,
    load_base_model,
    run_task_ids,
    task_examples,
    task_names,
)
from badit.training.methods import build_peft_config
from badit.training.trainer import build_adapter_model

FORWARDS = {
    "paper (components, raw)": {"method.gate": "components", "method.router_input": "raw"},
    "gate delta, raw": {"method.gate": "delta", "method.router_input": "raw"},
    "gate delta, standardized": {"method.gate": "delta", "method.router_input": "standardized"},
}


def batches_for(config, tokenizer, examples: int) -> dict:
    source = data_source(config)
    tasks = source.load("train", task_names(config, source))
    collate, ids = DataCollator(pad_token_id=tokenizer.pad_token_id), run_task_ids(config)
    out = {}
    for task in tasks:
        task.instances = task.instances[:examples]
        batch = collate(task_examples(config, tokenizer, task))
        batch["task_ids"] = torch.full_like(batch["input_ids"][:, 0], ids[task.name])
        out[task.name] = batch
    return out


@torch.no_grad()
def first_step(model, batches: dict, lr: float) -> tuple[float, float, float]:
    """(median massive-feature ratio, median logit move of the mean input, median task-gap move) over layers
    for one Adam step of size lr * sign(gradient) from the router's current weights."""
    layers = [m for m in model.modules() if isinstance(m, BaditLinear)]
    pooled: dict[int, list[torch.Tensor]] = {id(m): [] for m in layers}

    def hook(key: int):
        def capture(module, args, output):
            pooled[key].append(args[0].detach().float())

        return capture

    handles = [layer.badit_router["default"].register_forward_hook(hook(id(layer))) for layer in layers]
    means = []
    for batch in batches.values():
        for key in pooled:
            pooled[key].clear()
        model(**{k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "labels")})
        means.append({key: torch.cat(v).mean(0) for key, v in pooled.items()})
    for h in handles:
        h.remove()
    ratios, common, gaps = [], [], []
    for layer in layers:
        key = id(layer)
        task_means = torch.stack([m[key] for m in means])  # (T, in): what the router multiplies
        centre = task_means.mean(0)
        magnitude = centre.abs()
        ratios.append(float(magnitude.max() / magnitude.median().clamp_min(1e-12)))
        common.append(lr * float(centre.abs().sum()))  # |sign step . mean input|: every logit moves this much
        gaps.append(
            lr * float((task_means[0] - task_means[-1]).abs().sum())
        )  # at most this between two tasks
    return statistics.median(ratios), statistics.median(common), statistics.median(gaps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", nargs="?", default="configs/interference.yaml")
    parser.add_argument("--examples", type=int, default=8, help="training examples per task")
    args = parser.parse_args()
    rows = []
    for label, overrides in FORWARDS.items():
        config = load_config(args.config, overrides)
        base, tokenizer = load_base_model(config)
        model = build_adapter_model(base, build_peft_config(config.method), config.seed)
        batches = batches_for(config, tokenizer, args.examples)
        if config.method.router_input == "standardized":  # the running moments of these batches
            model.train()
            for batch in batches.values():
                model(**{k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "labels")})
        model.eval()
        sep = router_separability(model, batches)
        shares = [s for s in sep["router_gradient_task_share"] if s is not None]
        massive, move, gap = first_step(model, batches, config.training.learning_rate)
        rows.append(
            [
                label,
                f"{statistics.median(sep['input_common_share']):.3f}",
                f"{statistics.median(sep['input_probe_accuracy']):.2f}",
                f"{massive:.0f}",
                f"{statistics.median(shares):.2f}" if shares else "no gradient (delta = 0)",
                f"{move:.3f}",
                f"{gap:.3f}",
            ]
        )
    header = [
        "forward",
        "common share of the router input",
        "task probe accuracy",
        "massive feature / median",
        "task-specific share of the router gradient",
        "first step: logit move (mean input)",
        "first step: task gap move",
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
