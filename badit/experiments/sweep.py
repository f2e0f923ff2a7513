"""``badit sweep``: methods x learning rates x seeds, with the learning rate chosen on dev.

A sweep file (YAML) names a base run config and what varies::

    base: superni_multitask.yaml        # a run config; relative paths are relative to this file
    overrides:                          # dotted run-config fields applied to every run
      data.tasks: [task363_sst2_polarity_classification, task875_emotion_classification]
      training.max_steps: 30
    output_dir: runs/sweep              # relative to the current directory
    methods: [badit, svd-moe, loramoe, lora]
    learning_rates: [2.0e-4, 5.0e-4]
    seeds: [1, 2, 3]
    interference: [badit, lora]         # also train one adapter per task (setting single)
    bootstrap_samples: 2000

Protocol (the answer a user wants, without looking at test scores to choose):
 1. ``select/<method>-lr<lr>``: every method at every learning rate with the first seed, scored on
    the **dev** split; the learning rate with the best average dev ROUGE-L is chosen (ties: the
    smaller one).
 2. ``test/<method>-seed<seed>``: the chosen learning rate with every seed, scored on test.
 3. ``single/<method>``: for the ``interference`` methods, ``setting: single`` at the chosen learning
    rate with the first seed; interference = the first seed's multi-task test average minus it.
Every run is an ordinary ``badit train`` run folder (config.yaml, metrics.json, predictions.jsonl),
started as a subprocess of this process; a run whose metrics.json exists is skipped, so rerunning
the command resumes a sweep. On CPU the runs go one at a time; with N visible GPUs N run at once,
one per GPU (``CUDA_VISIBLE_DEVICES``). Subprocess logs: ``logs/<run>.log``.

``sweep.json`` (schema ``badit-sweep/1``), all scores x100, ROUGE-L unless named::

    {"schema": "badit-sweep/1", "sweep_file": str, "base": str, "overrides": {field: value},
     "methods": [str], "learning_rates": [float], "seeds": [int], "reference": "badit" | first method,
     "selection": {method: {"dev_rougeL": {lr_str: float}, "chosen_lr": float, "runs": {lr_str: path}}},
     "results": {method: {
         "learning_rate": float, "runs": {seed_str: path},
         "tasks": {task: {"mean": float, "std": float | null, "values": [float per seed]}},
         "average": {"mean", "std", "values"}, "exact_match_average": {"mean", "std", "values"},
         "difference_vs_reference": {"mean": float, "ci95": [low, high], "samples": int} | null,
         "interference": {"single_run": path, "single_average": float, "multi_average": float,
                          "score": float} | null,
         "cost": {"tokens_per_second": float | null, "train_seconds": float,
                  "peak_memory_mb": float | null, "adapter_bytes": int | null}}},
     "wall_seconds": float}

``std`` is the sample standard deviation over seeds (null with one seed). The paired bootstrap
resamples test examples within each task (same examples for both methods, each example's score
averaged over seeds) and recomputes the mean over tasks of (method - reference); ``ci95`` are the
2.5th and 97.5th percentiles. Hand-written: no maintained library does a stratified paired
bootstrap over per-example scores in a few lines (scipy.stats.bootstrap neither pairs by key nor
stratifies), and this is 15 lines of numpy.
"""

from __future__ import annotations

import math
import os
import queue
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from badit.data.files import atomic_write_json, atomic_write_text
from badit.experiments.config import METHODS, ConfigError, load_config
from badit.experiments.folder import SWEEP_FILE, SWEEP_LOG_DIR, SWEEP_TABLE, RunFolder
from badit.experiments.results import (
    AVERAGE,
    Group,
    ResultsError,
    Table,
    interference,
    load_run,
    number,
    paired_difference,
    with_spread,
)

SCHEMA = "badit-sweep/1"
KNOWN_KEYS = (
    "base",
    "overrides",
    "output_dir",
    "methods",
    "learning_rates",
    "seeds",
    "interference",
    "bootstrap_samples",
)


class SweepError(ConfigError):
    """A bad sweep file or a failed run, with the field (or log file) and the fix in the message."""


@dataclass
class Sweep:
    source: Path
    base: Path
    overrides: dict[str, Any]
    output_dir: Path
    methods: list[str]
    learning_rates: list[float]
    seeds: list[int]
    interference: list[str] = field(default_factory=list)
    bootstrap_samples: int = 2000

    @property
    def reference(self) -> str:
        return "badit" if "badit" in self.methods else self.methods[0]


@dataclass
class Job:
    name: str  # e.g. select/badit-lr0.0002
    method: str
    learning_rate: float
    seed: int
    overrides: dict[str, Any]

    def run_dir(self, sweep: Sweep) -> Path:
        return sweep.output_dir / self.name


# ----------------------------------------------------------------------------------------------
# Reading and checking the sweep file (everything is checked before any training starts)


def load_sweep(path: str | Path, output_dir: str | Path | None = None) -> Sweep:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise SweepError(f"{path}: no such sweep file") from None
    except yaml.YAMLError as error:
        raise SweepError(f"{path}: invalid YAML: {error}") from None
    if not isinstance(data, dict):
        raise SweepError(
            f"{path}: the top level must be a mapping (base:, methods:, learning_rates:, seeds:)"
        )
    return parse_sweep(data, path, output_dir)


def parse_sweep(data: dict, source: Path, output_dir: str | Path | None = None) -> Sweep:
    def fail(message: str):
        raise SweepError(f"{source}: {message}")

    unknown = [k for k in data if k not in KNOWN_KEYS]
    if unknown:
        fail(f"unknown field {unknown[0]!r}; the fields are {', '.join(KNOWN_KEYS)}")
    if "base" not in data:
        fail("base is missing: name a run config, e.g. base: ../configs/superni_multitask.yaml")
    base = Path(str(data["base"]))
    base = base if base.is_absolute() else (source.parent / base)
    if not base.is_file():
        fail(f"base: {base} is not a file (relative paths are relative to the sweep file)")
    overrides = data.get("overrides") or {}
    if not isinstance(overrides, dict):
        fail("overrides must be a mapping of dotted fields, e.g. {training.max_steps: 30}")
    methods = data.get("methods")
    if not isinstance(methods, list) or not methods:
        fail(f"methods must be a non-empty list, e.g. [badit, lora]; the methods are {', '.join(METHODS)}")
    for m in methods:
        if m not in METHODS:
            fail(f"methods: {m!r} is unknown; use some of {', '.join(METHODS)}")
    if len(set(methods)) != len(methods):
        fail("methods: a method is listed twice")
    lrs = data.get("learning_rates")
    if not isinstance(lrs, list) or not lrs:
        fail("learning_rates must be a non-empty list of numbers, e.g. [2.0e-4, 5.0e-4]")
    rates = []
    for lr in lrs:
        try:
            value = float(lr) if not isinstance(lr, bool) else math.nan
        except (TypeError, ValueError):
            value = math.nan
        if not value > 0:
            fail(f"learning_rates: {lr!r} is not a positive number")
        rates.append(value)
    seeds = data.get("seeds")
    if not isinstance(seeds, list) or not seeds:
        fail("seeds must be a non-empty list of integers, e.g. [1, 2, 3]")
    for s in seeds:
        if not isinstance(s, int) or isinstance(s, bool):
            fail(f"seeds: {s!r} is not an integer; write e.g. seeds: [1, 2, 3]")
    if len(set(seeds)) != len(seeds):
        fail("seeds: a seed is listed twice")
    interference = data.get("interference") or []
    if not isinstance(interference, list) or any(m not in methods for m in interference):
        fail(
            f"interference must list some of the sweep's methods ({', '.join(methods)}), got {interference!r}"
        )
    samples = data.get("bootstrap_samples", 2000)
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 100:
        fail(f"bootstrap_samples must be an integer >= 100, got {samples!r}")
    out = output_dir if output_dir is not None else data.get("output_dir")
    if not out:
        fail("output_dir is missing (or pass --output)")
    sweep = Sweep(
        source, base, overrides, Path(str(out)), list(methods), rates, list(seeds), interference, samples
    )
    for job in plan(sweep, {m: rates[0] for m in methods}):
        try:
            job_config(sweep, job)  # every run's config is valid before the first one starts
        except ConfigError as error:
            raise SweepError(str(error)) from None
    return sweep


def _lr_name(lr: float) -> str:
    return f"{lr:g}"


def plan_selection(sweep: Sweep) -> list[Job]:
    seed = sweep.seeds[0]
    return [
        Job(f"select/{m}-lr{_lr_name(lr)}", m, lr, seed, {"evaluation.split": "dev"})
        for m in sweep.methods
        for lr in sweep.learning_rates
    ]


def plan_final(sweep: Sweep, chosen: dict[str, float]) -> list[Job]:
    jobs = [Job(f"test/{m}-seed{s}", m, chosen[m], s, {}) for m in sweep.methods for s in sweep.seeds]
    jobs += [
        Job(f"single/{m}", m, chosen[m], sweep.seeds[0], {"setting": "single"}) for m in sweep.interference
    ]
    return jobs


def plan(sweep: Sweep, chosen: dict[str, float]) -> list[Job]:
    return plan_selection(sweep) + plan_final(sweep, chosen)


def job_overrides(sweep: Sweep, job: Job) -> dict[str, Any]:
    return {
        **sweep.overrides,
        "name": job.name.replace("/", "-"),
        "method.name": job.method,
        "training.learning_rate": job.learning_rate,
        "seed": job.seed,
        **job.overrides,
        "output_dir": str(job.run_dir(sweep)),
    }


def job_config(sweep: Sweep, job: Job):
    return load_config(sweep.base, job_overrides(sweep, job), source=f"{sweep.source} ({job.name})")


def _yaml_value(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10**9).strip()
    return text[: -len("...")].strip() if text.endswith("...") else text


# ----------------------------------------------------------------------------------------------
# Running


def is_finished(run_dir: Path) -> bool:
    return RunFolder(run_dir).has_metrics()


def visible_gpus() -> list[str]:
    try:
        import torch

        count = torch.cuda.device_count()
    except Exception:  # no torch build with CUDA
        count = 0
    if count <= 1:
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [x.strip() for x in listed.split(",")] if listed else [str(i) for i in range(count)]
    return ids[:count]


class Progress:
    """``[done/total] run (time) ETA`` lines; the ETA is the mean time of the runs trained so far."""

    def __init__(self, total: int, done: int, echo=print):
        self.total, self.done, self.echo = total, done, echo
        self.seconds: list[float] = []

    def finished(self, name: str, seconds: float | None) -> None:
        self.done += 1
        if seconds is not None:
            self.seconds.append(seconds)
        left = self.total - self.done
        eta = statistics.fmean(self.seconds) * left if self.seconds and left else 0.0
        took = "skipped (finished before)" if seconds is None else f"{_clock(seconds)}"
        self.echo(f"[{self.done}/{self.total}] {name}: {took}; ETA {_clock(eta)}", flush=True)


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def run_jobs(sweep: Sweep, jobs: list[Job], progress: Progress, runner=None) -> None:
    """Train the unfinished ``jobs`` (one per GPU, or one at a time); raise on the first failure."""
    runner = runner or _train_subprocess
    todo = [j for j in jobs if not is_finished(j.run_dir(sweep))]
    for job in jobs:
        if job not in todo:
            progress.finished(job.name, None)
    gpus = visible_gpus()
    slots: queue.Queue = queue.Queue()
    for gpu in gpus or [None]:
        slots.put(gpu)

    def one(job: Job) -> None:
        gpu = slots.get()
        try:
            start = time.perf_counter()
            runner(sweep, job, gpu)
            progress.finished(job.name, time.perf_counter() - start)
        finally:
            slots.put(gpu)

    with ThreadPoolExecutor(max_workers=max(1, len(gpus))) as pool:
        futures = [pool.submit(one, job) for job in todo]
        try:
            for future in futures:
                future.result()
        except BaseException:
            for future in futures:  # a failed (or interrupted) run stops the sweep: start no other
                future.cancel()
            raise


def _train_subprocess(sweep: Sweep, job: Job, gpu: str | None) -> None:
    run_dir = job.run_dir(sweep)
    log = sweep.output_dir / SWEEP_LOG_DIR / f"{job.name.replace('/', '-')}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "badit.cli.main", "train", str(sweep.base)]
    command += [f"{k}={_yaml_value(v)}" for k, v in job_overrides(sweep, job).items()]
    if run_dir.exists():
        command.append("--resume")  # an interrupted run continues from its last checkpoint
    env = dict(os.environ)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    with open(log, "a", encoding="utf-8") as out:
        out.write("$ " + " ".join(command) + "\n")
        out.flush()
        code = subprocess.call(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    if code != 0 or not is_finished(run_dir):
        raise SweepError(
            f"run {job.name} failed (exit code {code}); see {log}. Fix it and rerun the sweep to resume"
        )


# ----------------------------------------------------------------------------------------------
# Selection and aggregation (pure functions of the run folders' files)


def choose_learning_rate(dev_scores: dict[float, float]) -> float:
    """The learning rate with the highest dev score; ties go to the smaller learning rate."""
    return min(dev_scores, key=lambda lr: (-dev_scores[lr], lr))


def summarize_sweep(sweep: Sweep, chosen: dict[str, float], dev: dict[str, dict[float, float]]) -> dict:
    """sweep.json's content: every number from the results model (``badit.experiments.results``)."""
    groups, results = {}, {}
    for method in sweep.methods:
        dirs = {s: sweep.output_dir / f"test/{method}-seed{s}" for s in sweep.seeds}
        group = groups[method] = Group(
            method, method, "multitask", "", "test", [load_run(d) for d in dirs.values()]
        )
        tasks = group.tasks
        results[method] = {
            "learning_rate": chosen[method],
            "runs": {str(s): str(d) for s, d in dirs.items()},
            "tasks": {t: group.score(t, "rougeL").as_dict() for t in tasks},
            "average": group.score(AVERAGE, "rougeL").as_dict(),
            "exact_match_average": group.score(AVERAGE, "exact_match").as_dict(),
            "difference_vs_reference": None,
            "interference": None,
            "cost": _cost([r.info for r in group.runs]),
        }
        if method in sweep.interference:
            single_dir = sweep.output_dir / f"single/{method}"
            single = Group(method, method, "single", "", "test", [load_run(single_dir)])
            first_seed = Group(method, method, "multitask", "", "test", group.runs[:1])  # the protocol's
            found = interference(first_seed, single, tasks)
            results[method]["interference"] = {
                "single_run": str(single_dir),
                "single_average": single.score(AVERAGE, "rougeL", tasks).mean,
                "multi_average": found.group.score(AVERAGE, "rougeL", tasks).mean,
                "score": found.average["rougeL"],
            }
    ref = sweep.reference
    for method in sweep.methods:
        if method != ref:
            try:
                difference = paired_difference(groups[method], groups[ref], samples=sweep.bootstrap_samples)
            except ResultsError as error:
                raise SweepError(str(error)) from None
            results[method]["difference_vs_reference"] = difference
    return {
        "schema": SCHEMA,
        "sweep_file": str(sweep.source),
        "base": str(sweep.base),
        "overrides": sweep.overrides,
        "methods": sweep.methods,
        "learning_rates": sweep.learning_rates,
        "seeds": sweep.seeds,
        "reference": ref,
        "selection": {
            m: {
                "dev_rougeL": {_lr_name(lr): score for lr, score in dev[m].items()},
                "chosen_lr": chosen[m],
                "runs": {
                    _lr_name(lr): str(sweep.output_dir / f"select/{m}-lr{_lr_name(lr)}") for lr in dev[m]
                },
            }
            for m in sweep.methods
        },
        "results": results,
    }


def _cost(infos: list[dict]) -> dict:
    def mean_of(key):
        values = [i[key] for i in infos if i.get(key) is not None]
        return statistics.fmean(values) if values else None

    adapter = mean_of("adapter_bytes")
    return {
        "tokens_per_second": mean_of("tokens_per_second"),
        "train_seconds": mean_of("train_seconds"),
        "peak_memory_mb": mean_of("peak_memory_mb"),
        "adapter_bytes": int(adapter) if adapter is not None else None,
    }


# ----------------------------------------------------------------------------------------------
# Reports


def _pm(stats: dict) -> str:
    return with_spread(stats["mean"], stats["std"])


def format_sweep(summary: dict) -> str:
    """Markdown: selection, per-task mean ± std, average, difference vs reference with its CI, cost."""
    methods, results, ref = summary["methods"], summary["results"], summary["reference"]
    seeds = ", ".join(map(str, summary["seeds"]))
    lrs = summary["learning_rates"]
    selection = Table(
        ["method", *(f"dev @ {lr:g}" for lr in lrs), "chosen lr"],
        [
            [m, *(number(summary["selection"][m]["dev_rougeL"][_lr_name(lr)]) for lr in lrs)]
            + [number(summary["selection"][m]["chosen_lr"], "g")]
            for m in methods
        ],
        title=f"Sweep: {', '.join(methods)}",
        notes=[],
    )
    tasks = sorted({t for m in methods for t in results[m]["tasks"]})
    rows = [[t, *(_pm(results[m]["tasks"][t]) for m in methods)] for t in tasks]
    rows.append([AVERAGE, *(_pm(results[m]["average"]) for m in methods)])
    strong = {len(rows) - 1}
    rows.append(["EM average", *(_pm(results[m]["exact_match_average"]) for m in methods)])
    diff_cells = []
    for m in methods:
        d = results[m]["difference_vs_reference"]
        diff_cells.append(
            "(reference)" if d is None else f"{d['mean']:+.2f} [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}]"
        )
    rows.append([f"{ref} difference, 95% CI", *diff_cells])
    if any(results[m]["interference"] for m in methods):
        rows.append(
            ["interference vs single"]
            + [number((results[m]["interference"] or {}).get("score"), "+.2f") for m in methods]
        )
    cost = [results[m]["cost"] for m in methods]
    rows.append(["tokens/s", *(number(c["tokens_per_second"], ".0f") for c in cost)])
    rows.append(["train seconds", *(number(c["train_seconds"], ".0f") for c in cost)])
    rows.append(["peak memory (MiB)", *(number(c["peak_memory_mb"], ".0f") for c in cost)])
    sizes = [None if c["adapter_bytes"] is None else c["adapter_bytes"] / 2**20 for c in cost]
    rows.append(["adapter size (MiB)", *(number(size) for size in sizes)])
    notes = [
        f"Difference: method minus {ref}, mean over tasks, paired bootstrap over test examples "
        "(each example's score averaged over seeds; 95% percentile interval). Interference: the "
        "first seed's multi-task average minus that of one adapter per task (negative = interference). "
        "Peak memory: GPU memory allocated on a GPU, else the process's peak resident memory."
    ]
    if "wall_seconds" in summary:
        notes.append(f"Wall time of the sweep command: {_clock(summary['wall_seconds'])}.")
    scores = Table(["task (test ROUGE-L)", *methods], rows, strong=strong, notes=notes)
    intro = (
        f"Learning rate chosen on dev with seed {summary['seeds'][0]}; test scores are mean ± std over "
        f"seeds {seeds} (ROUGE-L)."
    )
    head, table = selection.markdown().split("\n\n", 1)
    return f"{head}\n\n{intro}\n\n{table}\n{scores.markdown()}"


def write_plots(summary: dict, folder: Path) -> list[Path]:
    """average.png: test average ± std per method; selection.png: dev score per learning rate."""
    from badit.analysis.plots import pyplot

    plt = pyplot()

    methods, results = summary["methods"], summary["results"]
    paths = [folder / "average.png", folder / "selection.png"]
    fig, ax = plt.subplots(figsize=(1.4 * len(methods) + 2, 3.2))
    means = [results[m]["average"]["mean"] for m in methods]
    stds = [results[m]["average"]["std"] or 0.0 for m in methods]
    ax.bar(methods, means, yerr=stds, capsize=4, color="tab:blue")
    ax.set_ylabel("test ROUGE-L (mean ± std over seeds)")
    fig.tight_layout()
    fig.savefig(paths[0], dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for m in methods:
        dev = summary["selection"][m]["dev_rougeL"]
        lrs = summary["learning_rates"]
        ax.plot(lrs, [dev[_lr_name(lr)] for lr in lrs], marker="o", label=m)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel(f"dev ROUGE-L (seed {summary['seeds'][0]})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(paths[1], dpi=120)
    plt.close(fig)
    return paths


# ----------------------------------------------------------------------------------------------
# The whole sweep


def run_sweep(sweep: Sweep, echo=print, runner=None) -> dict:
    start = time.perf_counter()
    sweep.output_dir.mkdir(parents=True, exist_ok=True)
    selection = plan_selection(sweep)
    total = len(selection) + len(sweep.methods) * len(sweep.seeds) + len(sweep.interference)
    progress = Progress(total, 0, echo)
    echo(f"sweep: {total} runs into {sweep.output_dir} ({len(visible_gpus()) or 'no multi-'}GPU parallelism)")
    run_jobs(sweep, selection, progress, runner)
    dev: dict[str, dict[float, float]] = {m: {} for m in sweep.methods}
    for job in selection:
        metrics = RunFolder(job.run_dir(sweep)).metrics()
        dev[job.method][job.learning_rate] = metrics["average"]["rougeL"]
    chosen = {m: choose_learning_rate(dev[m]) for m in sweep.methods}
    echo("chosen on dev: " + ", ".join(f"{m} {lr:g}" for m, lr in chosen.items()), flush=True)
    run_jobs(sweep, plan_final(sweep, chosen), progress, runner)
    summary = summarize_sweep(sweep, chosen, dev)
    summary["wall_seconds"] = round(time.perf_counter() - start, 1)
    table = format_sweep(summary)
    atomic_write_json(sweep.output_dir / SWEEP_FILE, summary)
    atomic_write_text(sweep.output_dir / SWEEP_TABLE, table)
    write_plots(summary, sweep.output_dir)
    echo(table, end="")
    return summary
