"""The GPU evidence run: SuperNI multi-task on SmolLM2-135M with badit, svd-moe, pissa and lora.

One command, one seed, each method at the learning rate its plan file names (benchmarks/gpu_evidence.yaml:
the 10 shared SuperNI tasks, 3 epochs, batch 32, bf16 on a bf16 GPU, length-grouped batches), every
run an ordinary `badit train` run folder (a subprocess each, as `badit sweep` starts them), then one
JSON with the card, the times, tokens/s (real tokens; padded positions beside them) and the scores:

    python benchmarks/gpu_evidence.py [--plan benchmarks/gpu_evidence.yaml] [--output runs/gpu-evidence]
                                      [--methods badit lora] [--data DIR]
    # a CPU check of the script with a tiny budget:
    python benchmarks/gpu_evidence.py --max-steps 2 --tasks 2 --examples 4 --output runs/gpu-evidence-cpu

`--tasks N` keeps the first N tasks (sorted), `--examples N` caps train and test examples per task,
`--max-steps N` replaces the epochs. A method whose run folder holds metrics.json is not trained
again (rerun the command to finish an interrupted set; for a fresh set choose another --output:
nothing is deleted). Results: OUTPUT/gpu_evidence.json and one line per method on the terminal.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("badit", "svd-moe", "pissa", "lora")
TEN_MINUTES = 600


def load_plan(path: Path) -> dict[str, Any]:
    """The plan file: `base` (a run config, relative to the plan), `overrides`, `seed`, `learning_rates`."""
    plan = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    missing = [key for key in ("base", "learning_rates") if key not in plan]
    if missing:
        raise SystemExit(f"{path}: missing field(s) {', '.join(missing)}; see benchmarks/gpu_evidence.yaml")
    plan["base"] = str((path.parent / plan["base"]).resolve())
    plan.setdefault("overrides", {})
    plan.setdefault("seed", 1)
    return plan


def first_tasks(data: str, count: int) -> list[str]:
    from badit.data import open_source

    return open_source(data).task_names()[:count]


def run_overrides(plan: dict, method: str, output: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The `badit train` overrides of one method's run."""
    if method not in plan["learning_rates"]:
        raise SystemExit(f"the plan has no learning rate for {method}; add learning_rates.{method}")
    overrides = {
        **plan["overrides"],
        "name": f"gpu-evidence-{method}",
        "method.name": method,
        "training.learning_rate": plan["learning_rates"][method],
        "seed": plan["seed"],
        "output_dir": str(output / method),
    }
    if args.data:
        overrides["data.path"] = args.data
    if args.tasks:
        overrides["data.tasks"] = first_tasks(str(overrides.get("data.path")), args.tasks)
    if args.examples:
        overrides["data.max_train_examples_per_task"] = args.examples
        overrides["evaluation.max_examples_per_task"] = args.examples
    if args.max_steps:
        overrides["training.max_steps"] = args.max_steps
    return overrides


def _value(value: Any) -> str:
    """An override's value as `badit train` parses it (YAML)."""
    if isinstance(value, str):
        return value
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


def command(plan: dict, overrides: dict[str, Any], resume: bool) -> list[str]:
    argv = [sys.executable, "-m", "badit.cli.main", "train", plan["base"]]
    argv += [f"{key}={_value(value)}" for key, value in overrides.items()]
    return argv + (["--resume"] if resume else [])


def train(plan: dict, overrides: dict[str, Any], log: Path) -> float:
    """Run `badit train` (resuming a folder without metrics.json); returns its wall time in seconds."""
    run_dir = Path(overrides["output_dir"])
    argv = command(plan, overrides, resume=run_dir.exists())
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log, "a", encoding="utf-8") as out:
        out.write("$ " + " ".join(argv) + "\n")
        out.flush()
        code = subprocess.call(argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    if code != 0 or not (run_dir / "metrics.json").is_file():
        raise SystemExit(f"{overrides['name']} failed (exit code {code}); see {log}")
    return time.perf_counter() - start


def device() -> dict[str, Any]:
    import torch

    if torch.cuda.is_available():
        return {
            "card": torch.cuda.get_device_name(0),
            "cuda": torch.version.cuda,
            "bf16": torch.cuda.is_bf16_supported(),
            "torch": torch.__version__,
        }
    cpu = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    return {"card": cpu, "torch": torch.__version__}


def summary(run_dir: Path, wall: float | None) -> dict[str, Any]:
    """What the JSON keeps of one run folder's metrics.json."""
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    run = metrics.get("run", {})
    padded, seconds = run.get("padded_tokens"), run.get("train_seconds")
    return {
        "run_dir": str(run_dir),
        "learning_rate": run.get("learning_rate"),
        "wall_seconds": round(wall, 1) if wall is not None else None,
        "train_seconds": seconds,
        "eval_seconds": run.get("eval_seconds"),
        "global_step": run.get("global_step"),
        "tokens_seen": run.get("tokens_seen"),
        "padded_tokens": padded,
        "tokens_per_second": run.get("tokens_per_second"),
        "positions_per_second": round(padded / seconds, 1) if padded and seconds else None,
        "peak_memory_mb": run.get("peak_memory_mb"),
        "rougeL": metrics["average"]["rougeL"],
        "exact_match": metrics["average"]["exact_match"],
        "tasks": {task: values["rougeL"] for task, values in metrics.get("tasks", {}).items()},
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--plan", type=Path, default=ROOT / "benchmarks" / "gpu_evidence.yaml")
    parser.add_argument("--output", type=Path, default=ROOT / "runs" / "gpu-evidence")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--data", default=None, help="data.path (default: the plan's)")
    parser.add_argument("--tasks", type=int, default=None, help="keep the first N tasks")
    parser.add_argument("--examples", type=int, default=None, help="train and test examples per task")
    parser.add_argument("--max-steps", type=int, default=None, help="optimizer steps instead of epochs")
    args = parser.parse_args(argv)
    plan = load_plan(args.plan)
    output = args.output.resolve()
    result: dict[str, Any] = {
        "schema": "badit-gpu-evidence/1",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "plan": str(args.plan),
        "budget": {"tasks": args.tasks, "examples": args.examples, "max_steps": args.max_steps},
        **device(),
        "methods": {},
    }
    start = time.perf_counter()
    for method in args.methods:
        overrides = run_overrides(plan, method, output, args)
        run_dir = Path(overrides["output_dir"])
        wall = None
        if not (run_dir / "metrics.json").is_file():
            wall = train(plan, overrides, output / "logs" / f"{method}.log")
        row = result["methods"][method] = summary(run_dir, wall)
        print(
            f"{method:8s} ROUGE-L {row['rougeL']:6.2f}  EM {row['exact_match']:6.2f}  "
            f"{row['tokens_per_second'] or 0:9.0f} tok/s  train {row['train_seconds']} s  "
            f"wall {row['wall_seconds']} s",
            flush=True,
        )
    result["total_seconds"] = round(time.perf_counter() - start, 1)
    result["within_10_minutes"] = result["total_seconds"] <= TEN_MINUTES
    output.mkdir(parents=True, exist_ok=True)
    target = output / "gpu_evidence.json"
    staging = target.with_suffix(".json.tmp")
    staging.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    os.replace(staging, target)
    print(f"{target} ({result['card']}, {result['total_seconds']} s)")
    return result


if __name__ == "__main__":
    main()
