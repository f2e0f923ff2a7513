"""``badit sweep``: methods x learning rates x seeds, with the learning rate chosen on dev.

A sweep file (YAML) names a base run config and what varies::

    base: superni_multitask.yaml        # a run config; relative paths are relative to this file
    overrides:                          # dotted run-config fields applied to every run
      data.tasks: [task363_sst2_polarity_classification, task875_emotion_classification]
      training.max_steps: 30
    output_dir: runs/sweep              # relative to the current directory
    methods: [badit, svd-moe, loramoe, lora, pissa]
    learning_rates: [5.0e-4, 2.0e-3, 8.0e-3]
    extend_grid: true                   # a chosen lr at the grid's edge: one more step beyond it
    seeds: [1, 2, 3]
    interference: [badit, lora]         # also train one adapter per task (setting single)

A method may be ``NAME+pcgrad`` (e.g. ``lora+pcgrad``, the run's label): method NAME with
``training.gradient_surgery: pcgrad``, so PCGrad is compared beside the plain method in one sweep (its
single-task runs, for ``interference``, train without surgery: one task per adapter has nothing to
project).

Protocol (the answer a user wants, without looking at test scores to choose):
 0. Before any run, the selection (dev) examples are compared with the test examples
    (`selection_overlap`): a task whose dev examples are test examples stops the sweep, named. Runs
    carve dev from train where dev is missing or is test (``data.dev_size``), and own data / raw
    SuperNI files are split with one seed, the first, for every run (``data.split_sizes.seed``).
 1. ``select/<method>-lr<lr>``: every method at every learning rate with the first seed, scored on
    the **dev** split; the learning rate with the best average dev ROUGE-L is chosen (ties: the
    smaller one). A choice at the grid's smallest or largest learning rate is said (``grid edge: ...``)
    and, with ``extend_grid``, one selection run one grid step beyond it is added and the choice made
    again (once).
 2. ``test/<method>-seed<seed>``: the chosen learning rate with every seed, scored on test; the first
    seed's is the winning selection run evaluated on test (no run is trained twice; in the continual
    setting seed 1 is trained again, as its score matrix needs every stage evaluated on test).
 3. ``single/<method>-seed<seed>``: for the ``interference`` methods, ``setting: single`` at the chosen
    learning rate with every seed, each task's adapter given the multi-task run's passes over its data
    (``training.single_task_steps: share``); interference = multi-task minus single-task, paired by
    seed and example, with the same interval as the comparison.
Every run is an ordinary ``badit train`` run folder (config.yaml, metrics.json, predictions.jsonl),
started as a subprocess of this process; a run whose results are complete (summary.md) is skipped, so rerunning
the command resumes a sweep. On CPU the runs go one at a time; with N visible GPUs N run at once,
one per GPU (``CUDA_VISIBLE_DEVICES``). Subprocess logs: ``logs/<run>.log``.

``sweep.json`` (schema ``badit-sweep/1``), all scores x100, ROUGE-L unless named::

    {"schema": "badit-sweep/1", "sweep_file": str, "base": str, "overrides": {field: value},
     "methods": [str], "learning_rates": [float], "seeds": [int], "reference": "badit" | first method,
     "selection": {method: {"dev_rougeL": {lr_str: float}, "chosen_lr": float, "runs": {lr_str: path},
                            "at_edge": "upper" | "lower" | null, "extended_to": float | null}},
     "results": {method: {
         "learning_rate": float, "runs": {seed_str: path},
         "tasks": {task: {"mean": float, "std": float | null, "values": [float per seed]}},
         "average": {"mean", "std", "values"}, "exact_match_average": {"mean", "std", "values"},
         "difference_vs_reference": INTERVAL | null,
         "interference": {"single_runs": {seed_str: path}, "single_average": {"mean", "std", "values"},
                          "multi_average": {"mean", "std", "values"}, "score": INTERVAL,
                          "budget": {"multi_task": str, "single_task": str, "batch_size": int,
                                     "seeds": [int]}} | null,
         "cost": {"tokens_per_second": float | null, "train_seconds": float,
                  "peak_memory_mb": float | null, "adapter_bytes": int | null}}},
     "wall_seconds": float}

    INTERVAL = {"mean": float, "ci95": [low, high], "seeds": int, "examples": int, "tasks": int,
                "df": float, "std_error": float, "interval": str, "resolvable": float | null,
                "power": 0.8}

``std`` is the sample standard deviation over seeds (null with one seed). INTERVAL is
`badit.evaluation.statistics.paired_interval`: the mean over tasks of (method - reference), seed s of
one paired with seed s of the other on the same test examples, with a t interval whose variance counts
the examples and the seeds (docs/method.md, "Intervals that count seeds"); ``resolvable``: the smallest
true difference that interval tells from 0 with probability ``power`` at its n
(`badit.evaluation.statistics.resolvable_difference`; absent from sweep.json files written before it,
whose tables compute it from std_error and df). ``bootstrap_samples`` in a
sweep file is accepted and unused (the interval is no longer a bootstrap).
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from badit.data.files import atomic_write_json, atomic_write_text
from badit.experiments.config import METHODS, ConfigError, load_config
from badit.experiments.folder import SWEEP_FILE, SWEEP_LOG_DIR, SWEEP_TABLE, RunFolder, RunLock, is_number
from badit.experiments.results import (
    AVERAGE,
    REFERENCE_METHOD,
    Group,
    ResultsError,
    Table,
    load_run,
    number,
    paired_difference,
    with_spread,
)
from badit.experiments.yamlfile import YamlError, load_yaml
from badit.names import GRADIENT_SURGERIES

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
    "extend_grid",
    "launcher",
)
BACKENDS = ("local", "submitit")
"""Where a sweep's runs train (`launcher.backend`, `badit sweep --backend`): ``local`` subprocesses of
the sweep (one per visible GPU at a time), or ``submitit`` jobs: Slurm where ``srun`` exists, else
submitit's local executor."""
CI_LEVEL = 0.95  # two-sided 95%: percentiles 2.5 and 97.5


class SweepError(ConfigError):
    """A bad sweep file or a failed run, with the field (or log file) and the fix in the message."""


@dataclass
class Launcher:
    """How the runs are started (the sweep file's ``launcher:`` section)."""

    backend: str = "local"
    max_parallel: int | None = None
    """Runs in flight at once; default: one per visible GPU (local), every run (Slurm), one (submitit's
    local executor: runs on this machine's CPUs slow each other)."""
    timeout_min: int = 24 * 60
    """submitit: the job time limit (Slurm's --time); a run cut by it continues with --resume."""
    slurm: dict[str, Any] = field(default_factory=dict)
    """submitit: further `AutoExecutor.update_parameters` fields, e.g. {slurm_partition: gpu, cpus_per_task: 8}."""
    gpus_per_run: int = 1
    """Processes (GPUs) per run: above 1 a run is launched as `torch.distributed.run` with that many
    processes (data parallel; on a machine without GPUs, gloo processes on its CPUs)."""


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
    """Unused since the interval became a t interval over seeds and examples (kept: old sweep files)."""
    extend_grid: bool = False
    """A method whose chosen learning rate is at the edge of the grid gets one more selection run, one
    grid step beyond that edge (once)."""
    launcher: Launcher = field(default_factory=Launcher)

    @property
    def reference(self) -> str:
        return REFERENCE_METHOD if REFERENCE_METHOD in self.methods else self.methods[0]


@dataclass
class Job:
    name: str  # e.g. select/badit-lr0.0002
    method: str
    learning_rate: float
    seed: int
    overrides: dict[str, Any]
    evaluate: str | None = None
    """A job that trains nothing: the run folder (under the sweep) whose adapter is evaluated on test
    into this job's folder (`badit.experiments.reevaluate`, ``as_run``)."""

    def run_dir(self, sweep: Sweep) -> Path:
        return sweep.output_dir / self.name


# ----------------------------------------------------------------------------------------------
# Reading and checking the sweep file (everything is checked before any training starts)


def load_sweep(path: str | Path, output_dir: str | Path | None = None) -> Sweep:
    path = Path(path)
    if not path.exists():
        raise SweepError(f"{path}: no such sweep file")
    try:
        data = load_yaml(path) or {}
    except YamlError as error:
        raise SweepError(str(error)) from None
    if not isinstance(data, dict):
        raise SweepError(
            f"{path}: the top level must be a mapping (base:, methods:, learning_rates:, seeds:)"
        )
    return parse_sweep(data, path, output_dir)


def parse_launcher(data: Any, fail) -> Launcher:
    """The ``launcher:`` section, checked (``fail``: raises with the sweep file named)."""
    if not isinstance(data, dict):
        fail("launcher must be a mapping, e.g. {backend: submitit, max_parallel: 4}")
    fields = ("backend", "max_parallel", "timeout_min", "slurm", "gpus_per_run")
    unknown = [k for k in data if k not in fields]
    if unknown:
        fail(f"launcher: unknown field {unknown[0]!r}; the fields are {', '.join(fields)}")
    launcher = Launcher(**data)
    check_backend(launcher.backend, fail)
    for name in ("max_parallel", "timeout_min", "gpus_per_run"):
        value = getattr(launcher, name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            fail(f"launcher.{name} must be a positive integer, got {value!r}")
    if not isinstance(launcher.slurm, dict):
        fail("launcher.slurm must be a mapping of submitit parameters, e.g. {slurm_partition: gpu}")
    return launcher


def check_backend(backend: str, fail) -> None:
    if backend not in BACKENDS:
        fail(f"launcher.backend {backend!r} is unknown; use one of {', '.join(BACKENDS)}")
    if backend == "submitit" and importlib.util.find_spec("submitit") is None:
        fail("launcher.backend submitit needs the submitit package: pip install 'badit[slurm]'")


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
        name, plus, surgery = str(m).partition("+")
        if not isinstance(m, str) or name not in METHODS or (plus and surgery not in GRADIENT_SURGERIES[1:]):
            fail(
                f"methods: {m!r} is unknown; use some of {', '.join(METHODS)}, "
                f"or NAME+{'|'.join(GRADIENT_SURGERIES[1:])} for gradient surgery"
            )
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
    extend_grid = data.get("extend_grid", False)
    if not isinstance(extend_grid, bool):
        fail(f"extend_grid must be true or false, got {extend_grid!r}")
    launcher = parse_launcher(data.get("launcher") or {}, fail)
    out = output_dir if output_dir is not None else data.get("output_dir")
    if not out:
        fail("output_dir is missing (or pass --output)")
    sweep = Sweep(
        source,
        base,
        overrides,
        Path(str(out)),
        list(methods),
        rates,
        list(seeds),
        interference,
        samples,
        extend_grid,
        launcher,
    )
    try:
        for job in plan(sweep, {m: rates[0] for m in methods}):
            job_config(sweep, job)  # every run's config is valid before the first one starts
    except ConfigError as error:
        raise SweepError(str(error)) from None
    return sweep


def _lr_name(lr: float | str) -> str:
    return lr if isinstance(lr, str) else f"{lr:g}"  # a str: a placeholder (``--dry-run``)


def plan_selection(sweep: Sweep) -> list[Job]:
    seed = sweep.seeds[0]
    return [
        Job(selection_name(m, lr), m, lr, seed, {"evaluation.split": "dev"})
        for m in sweep.methods
        for lr in sweep.learning_rates
    ]


def selection_name(method: str, lr: float) -> str:
    return f"select/{method}-lr{_lr_name(lr)}"


def plan_final(sweep: Sweep, chosen: dict[str, float]) -> list[Job]:
    """Test runs at the chosen learning rates and the single-task runs of the interference methods.

    The first seed's test run is the winning selection run (same config, seed and data: dev is carved
    from train independently of the evaluated split) evaluated on test, not trained again. Single-task
    runs: every seed, each task's adapter given the passes over its data of the multi-task run
    (``training.single_task_steps: share``)."""
    first = sweep.seeds[0]
    # A continual run's score matrix needs every stage evaluated on test: there seed 1 is trained again.
    base = base_config(sweep)
    reuse = base.setting != "continual"
    jobs = []
    for m in sweep.methods:
        winner = selection_name(m, chosen[m]) if reuse else None
        jobs.append(Job(f"test/{m}-seed{first}", m, chosen[m], first, {}, evaluate=winner))
        jobs += [Job(f"test/{m}-seed{s}", m, chosen[m], s, {}) for s in sweep.seeds[1:]]
    single = {"setting": "single", "training.single_task_steps": "share"}
    # one task per adapter: nothing for gradient surgery to project (refused in setting single)
    no_surgery = {"training.gradient_surgery": "none"}
    jobs += [
        Job(f"single/{m}-seed{s}", m, chosen[m], s, single | (no_surgery if uses_surgery(base, m) else {}))
        for m in sweep.interference
        for s in sweep.seeds
    ]
    return jobs


def uses_surgery(base, method: str) -> bool:
    """Whether ``method``'s runs (``NAME+pcgrad``, or a base config that sets it) use gradient surgery."""
    return "+" in method or base.training.gradient_surgery != "none"


def plan(sweep: Sweep, chosen: dict[str, float]) -> list[Job]:
    return plan_selection(sweep) + plan_final(sweep, chosen)


def base_config(sweep: Sweep):
    """The base run config with the sweep's overrides (what every run shares)."""
    return load_config(sweep.base, sweep.overrides, source=str(sweep.source))


def split_seed_override(sweep: Sweep) -> dict[str, Any]:
    """Own data and raw SuperNI files are split with ``data.split_sizes.seed``, by default the run's
    seed: pinned to the first seed for every run of the sweep, so every seed and method is scored on
    the same test examples (and trains on the same rest), unless the sweep already pins it."""
    sizes = dict(base_config(sweep).data.split_sizes or {})
    if "seed" in sizes:
        return {}
    return {"data.split_sizes": {**sizes, "seed": sweep.seeds[0]}}


def job_overrides(sweep: Sweep, job: Job) -> dict[str, Any]:
    name, _, surgery = job.method.partition("+")  # ``lora+pcgrad``: lora with gradient surgery
    return {
        **sweep.overrides,
        **split_seed_override(sweep),
        "name": job.name.replace("/", "-"),
        "method.name": name,
        **({"training.gradient_surgery": surgery} if surgery else {}),
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
    """A run killed after its metrics.json but before the rest of its results is not: rerunning the sweep
    resumes it (`badit train --resume` trains no further step and writes the results)."""
    return RunFolder(run_dir).is_complete()


# What a finished run must share with the job that would skip it: a sweep whose grid, seeds or methods
# changed, rerun into the same folder, would otherwise report an old run under a new learning rate.
IDENTITY = ("method.name", "training.learning_rate", "seed", "training.gradient_surgery")


def check_finished_run(sweep: Sweep, job: Job) -> None:
    """Raise SweepError when ``job``'s finished run folder was trained with another method, learning rate,
    seed or gradient surgery than the job asks (its config.yaml against `job_config`); fields the folder's
    config.yaml lacks, and folders without one (made by other tools), are taken as they are."""
    folder = RunFolder(job.run_dir(sweep))
    if not folder.has_config():
        return
    saved = folder.saved_config()
    wanted = job_config(sweep, job)
    differ = []
    for key in IDENTITY:
        section, _, field_name = key.rpartition(".")
        have = (saved.get(section) or {}).get(field_name) if section else saved.get(field_name)
        want = getattr(getattr(wanted, section), field_name) if section else getattr(wanted, field_name)
        if have is None:  # a field its badit version did not write: nothing to hold against it
            continue
        same = (
            math.isclose(float(have), float(want), rel_tol=1e-9)
            if is_number(have) and is_number(want)
            else have == want
        )
        if not same:
            differ.append(f"{key} {have!r}, the sweep asks {want!r}")
    if differ:
        raise SweepError(
            f"{folder.path}: a finished run with {'; '.join(differ)}. Move that folder away or give the "
            f"sweep another --output, then rerun (nothing was trained)"
        )


def run_gpus(gpus: list[str], per_run: int) -> list[str]:
    """The visible GPUs as CUDA_VISIBLE_DEVICES values of ``per_run`` GPUs each (["0,1", "2,3"] for 4 GPUs
    and 2 per run); GPUs left over are not used. A SweepError when fewer than ``per_run`` are visible."""
    if not gpus or per_run == 1:
        return gpus
    if len(gpus) < per_run:
        raise SweepError(f"launcher.gpus_per_run {per_run}: only {len(gpus)} GPUs are visible")
    return [",".join(gpus[i : i + per_run]) for i in range(0, len(gpus) - per_run + 1, per_run)]


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
    runner = runner or (_train_submitit if sweep.launcher.backend == "submitit" else _train_subprocess)
    todo = [j for j in jobs if not is_finished(j.run_dir(sweep))]
    for job in jobs:  # all checked before anything trains
        if job not in todo:
            check_finished_run(sweep, job)
            progress.finished(job.name, None)
    gpus = run_gpus(visible_gpus(), sweep.launcher.gpus_per_run) if sweep.launcher.backend == "local" else []
    parallel = sweep.launcher.max_parallel or (
        len(gpus) or 1 if sweep.launcher.backend == "local" else (len(todo) or 1) if _has_slurm() else 1
    )
    parallel = min(parallel, len(gpus)) if gpus else parallel  # a GPU (group) trains one run at a time
    slots: queue.Queue = queue.Queue()
    for i in range(parallel):
        slots.put(gpus[i] if gpus else None)

    failed = threading.Event()  # set by the first failure: no run starts after it

    def one(job: Job) -> None:
        gpu = slots.get()
        try:
            # The pool's worker takes the next job the moment a run fails (or is killed by a stop),
            # before the main thread can cancel it; without this check the sweep would train one more
            # run, and a stopped sweep would wait for it before exiting.
            if failed.is_set() or _STOPPED.is_set():
                raise SweepError(f"run {job.name} not started: the sweep is stopping")
            start = time.perf_counter()
            runner(sweep, job, gpu)
            progress.finished(job.name, time.perf_counter() - start)
        except BaseException:
            failed.set()
            raise
        finally:
            slots.put(gpu)

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        futures = [pool.submit(one, job) for job in todo]
        try:
            for future in futures:
                future.result()
        except BaseException:
            for future in futures:  # a failed (or interrupted) run stops the sweep: start no other
                future.cancel()
            raise


EVALUATE_CODE = (
    "import sys; from badit.experiments.folder import trusting_remote_code; "
    "from badit.experiments.reevaluate import reevaluate\n"
    "with trusting_remote_code(sys.argv[3] == 'trust'):\n"
    "    reevaluate(sys.argv[1], ['evaluation.split=test'], sys.argv[2], as_run=True)"
)
"""A winning selection run scored on test (argv: the run, the new run folder, ``trust`` when the sweep's own
base config sets model.trust_remote_code: the user's file said so, not a run folder from elsewhere)."""


def _job_command(sweep: Sweep, job: Job) -> list[str]:
    """The command that trains ``job`` (or scores its selection run on test), resuming a run folder that
    exists: what every backend runs."""
    run_dir = job.run_dir(sweep)
    if job.evaluate is not None:  # the winning selection run, scored on test
        trust = "trust" if base_config(sweep).model.trust_remote_code else "-"
        command = [
            sys.executable,
            "-c",
            EVALUATE_CODE,
            str(sweep.output_dir / job.evaluate),
            str(run_dir),
            trust,
        ]
    else:
        launch = [sys.executable, "-m", "badit.cli.main"]
        if sweep.launcher.gpus_per_run > 1:  # data parallel over the run's GPUs (gloo processes on a CPU)
            processes = str(sweep.launcher.gpus_per_run)
            launch = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc_per_node",
                processes,
            ]
            launch += ["-m", "badit.cli.main"]
        command = [*launch, "train", str(sweep.base)]
        command += [f"{k}={_yaml_value(v)}" for k, v in job_overrides(sweep, job).items()]
    if run_dir.exists() and job.evaluate is None:
        command.append("--resume")  # an interrupted (or preempted) run continues from its last checkpoint
    return command


def _has_slurm() -> bool:
    return shutil.which("srun") is not None


_REMOTE: set = set()
"""The submitit jobs of the running sweep (`_stop_children` cancels them)."""


def _train_submitit(sweep: Sweep, job: Job, gpu: str | None) -> None:
    """``job`` as a submitit job: on Slurm where ``srun`` exists (``launcher.slurm`` passed through, e.g. the
    partition and GPUs), else submitit's local executor; its stdout and stderr are the job's files under
    SWEEP/submitit/. A job that fails, is cancelled or times out raises; rerunning the sweep resumes it."""
    import submitit

    run_dir = job.run_dir(sweep)
    folder = sweep.output_dir / "submitit"
    executor = submitit.AutoExecutor(folder=str(folder), cluster=None if _has_slurm() else "local")
    parameters = {"gpus_per_node": sweep.launcher.gpus_per_run} if _has_slurm() else {}
    executor.update_parameters(
        name=f"badit-{job.name.replace('/', '-')}",
        timeout_min=sweep.launcher.timeout_min,
        **{**parameters, **sweep.launcher.slurm},
    )
    command = _job_command(sweep, job)
    submitted = executor.submit(
        submitit.helpers.CommandFunction(command, cwd=os.getcwd(), env=dict(os.environ))
    )
    _REMOTE.add(submitted)
    try:
        submitted.result()
    except Exception as error:  # submitit's FailedJobError / UncompletedJobError, the command's exit code
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SweepError(
            f"run {job.name} failed as submitit job {submitted.job_id} ({first[:200]}); see {submitted.paths.stderr}. "
            "Fix it and rerun the sweep to resume"
        ) from None
    finally:
        _REMOTE.discard(submitted)
    if not is_finished(run_dir):
        raise SweepError(
            f"run {job.name}: submitit job {submitted.job_id} ended without results; see {submitted.paths.stdout}"
        )


def _train_subprocess(sweep: Sweep, job: Job, gpu: str | None) -> None:
    run_dir = job.run_dir(sweep)
    log = sweep.output_dir / SWEEP_LOG_DIR / f"{job.name.replace('/', '-')}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    command = _job_command(sweep, job)
    env = dict(os.environ)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    with open(log, "a", encoding="utf-8") as out:
        out.write("$ " + " ".join(command) + "\n")
        out.flush()
        # its own process group (session), which `_stop_children` ends when the sweep is stopped
        child = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        _CHILDREN.add(child)
        try:
            code = child.wait()
        finally:
            _CHILDREN.discard(child)
    if code != 0 or not is_finished(run_dir):
        raise SweepError(
            f"run {job.name} failed (exit code {code}); see {log}. Fix it and rerun the sweep to resume"
        )


# ----------------------------------------------------------------------------------------------
# Selection and aggregation (pure functions of the run folders' files)


def choose_learning_rate(dev_scores: dict[float, float]) -> float:
    """The learning rate with the highest dev score; ties go to the smaller learning rate."""
    return min(dev_scores, key=lambda lr: (-dev_scores[lr], lr))


def selection_overlap(sweep: Sweep) -> list[str]:
    """One line per task whose selection (dev) examples, as a selection run scores them, include test
    examples (same id, or same input and answers): choosing on them would be choosing on test."""
    from badit.data.sources import shared_examples
    from badit.experiments.stage import data_source, load_run_tasks, task_names

    config = job_config(sweep, plan_selection(sweep)[0])
    source = data_source(config)
    names = task_names(config, source)
    _, dev = load_run_tasks(config, names, source)
    test = source.load("test", names)
    lines = []
    for d, t in zip(dev, test, strict=True):
        shared = shared_examples(d, t)
        if shared:
            lines.append(
                f"task {d.name}: {shared} of its {len(d.instances)} selection (dev) examples are test examples"
            )
    return lines


def grid_edge(grid: list[float], chosen: float) -> str | None:
    """ "upper" / "lower" when ``chosen`` is the largest / smallest of a grid of >= 2 learning rates."""
    if len(grid) < 2:
        return None
    if chosen >= max(grid):
        return "upper"
    if chosen <= min(grid):
        return "lower"
    return None


def step_beyond(grid: list[float], edge: str) -> float:
    """One grid step beyond ``edge``: the ratio of the two outermost learning rates on that side (a
    geometric grid 5e-4, 1e-3, 2e-3 goes on to 4e-3 or 2.5e-4)."""
    g = sorted(grid)
    return g[-1] * g[-1] / g[-2] if edge == "upper" else g[0] * g[0] / g[1]


def _budget(sweep: Sweep) -> dict:
    """The training budget of both sides of the interference score, in words and numbers."""
    config = base_config(sweep).training
    if config.max_steps > 0:
        multi = f"{config.max_steps} optimizer steps over all tasks"
        single = f"max_steps x the task's share of the training examples per task ({config.max_steps} in all)"
    else:
        multi = f"{config.num_train_epochs:g} epochs over all tasks"
        single = f"{config.num_train_epochs:g} epochs over the task's own data"
    return {
        "multi_task": multi,
        "single_task": f"{single}: the same passes over each task's data",
        "batch_size": config.per_device_train_batch_size * config.gradient_accumulation_steps,
        "seeds": sweep.seeds,
    }


def _paired(group: Group, reference: Group) -> dict:
    try:
        return paired_difference(group, reference)
    except ResultsError as error:
        raise SweepError(str(error)) from None


def summarize_sweep(
    sweep: Sweep,
    chosen: dict[str, float],
    dev: dict[str, dict[float, float]],
    edges: dict[str, dict] | None = None,
) -> dict:
    """sweep.json's content: every number from the results model (``badit.experiments.results``)."""
    groups, results = {}, {}
    edges = edges or {}
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
            single_dirs = {s: sweep.output_dir / f"single/{method}-seed{s}" for s in sweep.seeds}
            single = Group(method, method, "single", "", "test", [load_run(d) for d in single_dirs.values()])
            results[method]["interference"] = {
                "single_runs": {str(s): str(d) for s, d in single_dirs.items()},
                "single_average": single.score(AVERAGE, "rougeL", tasks).as_dict(),
                "multi_average": group.score(AVERAGE, "rougeL", tasks).as_dict(),
                "score": _paired(group, single),  # multi - single, paired by seed and example
                "budget": _budget(sweep),
            }
    ref = sweep.reference
    for method in sweep.methods:
        if method != ref:
            results[method]["difference_vs_reference"] = _paired(groups[method], groups[ref])
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
                "runs": {_lr_name(lr): str(sweep.output_dir / selection_name(m, lr)) for lr in dev[m]},
                "at_edge": edges.get(m, {}).get("edge"),
                "extended_to": edges.get(m, {}).get("extended_to"),
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
    from badit.evaluation.statistics import METHOD as INTERVAL
    from badit.evaluation.statistics import POWER, RESOLVABLE, describe, describe_resolvable

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
        diff_cells.append("(reference)" if d is None else describe(d))
    rows.append([f"{ref} difference, 95% CI", *diff_cells])
    resolvable = [
        "(reference)" if d is None else describe_resolvable(d)
        for d in (results[m]["difference_vs_reference"] for m in methods)
    ]
    rows.append([f"{ref} difference resolvable ({POWER:.0%} power)", *resolvable])
    if any(results[m]["interference"] for m in methods):
        scores_of = [
            results[m]["interference"]["score"] if results[m]["interference"] else None for m in methods
        ]
        rows.append(["interference vs single, 95% CI", *(describe(s) if s else "-" for s in scores_of)])
        rows.append([f"interference resolvable ({POWER:.0%} power)", *map(describe_resolvable, scores_of)])
    cost = [results[m]["cost"] for m in methods]
    rows.append(["tokens/s", *(number(c["tokens_per_second"], ".0f") for c in cost)])
    rows.append(["train seconds", *(number(c["train_seconds"], ".0f") for c in cost)])
    rows.append(["peak memory (MiB)", *(number(c["peak_memory_mb"], ".0f") for c in cost)])
    sizes = [None if c["adapter_bytes"] is None else c["adapter_bytes"] / 2**20 for c in cost]
    rows.append(["adapter size (MiB)", *(number(size) for size in sizes)])
    budget = next((results[m]["interference"]["budget"] for m in methods if results[m]["interference"]), None)
    notes = [
        f"Difference: method minus {ref}, mean over tasks; 95% interval: {INTERVAL} (n = test examples x "
        "seeds, seed s of one method paired with seed s of the other). Interference: multi-task minus "
        "one adapter per task, paired by seed and example, the same interval (negative = interference)."
        + (
            f" Budget: multi-task {budget['multi_task']}; single-task {budget['single_task']}; seeds "
            f"{', '.join(map(str, budget['seeds']))}."
            if budget
            else ""
        )
        + " Peak memory: GPU memory allocated on a GPU, else the process's peak resident memory.",
        f"Difference and interference {RESOLVABLE}",
    ]
    for m in methods:
        sel = summary["selection"][m]
        if sel.get("at_edge"):
            grid = sorted(map(float, sel["dev_rougeL"]))
            notes.append(edge_warning(m, sel["chosen_lr"], sel["at_edge"], grid))
        elif sel.get("extended_to") is not None:
            extended = sel["dev_rougeL"][_lr_name(sel["extended_to"])]
            notes.append(
                f"{m}: the grid was extended to {sel['extended_to']:g} (dev {extended:.2f}); chosen "
                f"{sel['chosen_lr']:g}, inside the grid."
            )
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


def edge_warning(method: str, lr: float, edge: str, grid: list[float]) -> str:
    side = "largest" if edge == "upper" else "smallest"
    beyond = "above" if edge == "upper" else "below"
    return (
        f"grid edge: {method} chose {lr:g}, the {side} learning rate of its grid "
        f"({', '.join(f'{x:g}' for x in sorted(grid))}): its best may lie {beyond} it; add "
        f"{step_beyond(grid, edge):g} to learning_rates, or set extend_grid: true in the sweep file"
    )


def too_small_splits(sweep: Sweep) -> list[str]:
    """One line per task and split (dev: selection, test) that the sweep's runs would score on fewer than
    2 examples: no interval can be formed there (no variance), so the comparison it exists for fails."""
    import dataclasses

    from badit.experiments.stage import data_source, load_run_tasks, task_names

    config = job_config(sweep, plan_selection(sweep)[0])
    source = data_source(config)
    names = task_names(config, source)
    lines = []
    for split in ("dev", "test"):
        scored = dataclasses.replace(config, evaluation=dataclasses.replace(config.evaluation, split=split))
        _, tasks = load_run_tasks(scored, names, source)
        lines += [
            f"task {t.name}: {len(t.instances)} {split} example(s)" for t in tasks if len(t.instances) < 2
        ]
    return lines


def check_selection_data(sweep: Sweep) -> None:
    """Refuse, before any run trains and naming the tasks, a sweep whose selection examples are test
    examples, or whose runs would score a task on fewer than 2 dev or test examples (no interval)."""
    small = too_small_splits(sweep)
    if small:
        raise SweepError(
            f"{sweep.source}: {'; '.join(small)}: an interval needs at least 2 examples per task. Give those "
            "tasks more dev / test examples (data.dev_size, data.split_sizes, evaluation.max_examples_per_task)"
        )
    overlap = selection_overlap(sweep)
    if overlap:
        raise SweepError(
            f"{sweep.source}: selection would be on test: {'; '.join(overlap)} (same id, or same input "
            "and answers). Keep data.dev_size > 0 so that dev is carved from train, give those tasks a "
            "dev split without test examples, or remove the duplicated rows"
        )


_CHILDREN: set[subprocess.Popen] = set()
"""The `badit train` processes of the running sweep (each the leader of its own process group)."""
_STOPPED = threading.Event()
"""Set when SIGTERM or SIGINT stops the sweep (`_children_stopped_on_signals`): `run_jobs` starts no run."""
STOP_GRACE_SECONDS = 10.0
"""How long a stopped sweep waits for its runs to end after SIGTERM before it kills them (SIGKILL). A run
has nothing to flush (checkpoints are written crash-safe), so the wait only has to cover a clean exit."""


def _stop_children() -> None:
    """Cancel the submitit jobs; SIGTERM to each running child's process group, SIGKILL to those still
    alive after the grace time."""
    for remote in list(_REMOTE):
        with contextlib.suppress(Exception):  # already ended
            remote.cancel()
    children = list(_CHILDREN)
    for child in children:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for child in children:
        try:
            child.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)


@contextlib.contextmanager
def _children_stopped_on_signals():
    """While inside (main thread only), SIGTERM and SIGINT stop the sweep's runs first, then end the sweep
    as they would (KeyboardInterrupt, exit status 128 + 15): the runs live in process groups of their own,
    so a terminal's Ctrl-C or a `kill` of the sweep does not reach them otherwise."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        _STOPPED.set()
        _stop_children()
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)

    _STOPPED.clear()
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_sweep(sweep: Sweep, echo=print, runner=None, check_data: bool = True) -> dict:
    """Run the sweep (the module docstring says how), holding the sweep folder's lock (a second sweep
    into the same folder is refused in one line naming this process's pid); stopped by SIGTERM or SIGINT,
    it stops its running `badit train` processes first."""
    start = time.perf_counter()
    if check_data:
        check_selection_data(sweep)
    with RunLock(sweep.output_dir, "sweep"), _children_stopped_on_signals():
        return _run_sweep(sweep, echo, runner, start)


def _run_sweep(sweep: Sweep, echo, runner, start: float) -> dict:
    sweep.output_dir.mkdir(parents=True, exist_ok=True)
    selection = plan_selection(sweep)
    total = (
        len(selection) + len(sweep.methods) * len(sweep.seeds) + len(sweep.interference) * len(sweep.seeds)
    )
    progress = Progress(total, 0, echo)
    where = (
        f"{len(visible_gpus()) or 'no multi-'}GPU parallelism"
        if sweep.launcher.backend == "local"
        else f"submitit, {'Slurm' if _has_slurm() else 'local executor'}"
    )
    echo(f"sweep: {total} runs into {sweep.output_dir} ({where})")
    run_jobs(sweep, selection, progress, runner)
    dev: dict[str, dict[float, float]] = {m: {} for m in sweep.methods}

    def read_dev(jobs: list[Job]) -> None:
        for job in jobs:
            dev[job.method][job.learning_rate] = RunFolder(job.run_dir(sweep)).metrics()["average"]["rougeL"]

    read_dev(selection)
    chosen = {m: choose_learning_rate(dev[m]) for m in sweep.methods}
    edges: dict[str, dict] = {}
    for m in sweep.methods:
        edge = grid_edge(sweep.learning_rates, chosen[m])
        if edge:
            edges[m] = {"edge": edge, "extended_to": None}
    if sweep.extend_grid and edges:
        extra = []
        for m, info in edges.items():
            lr = step_beyond(sweep.learning_rates, info["edge"])
            info["extended_to"] = lr
            extra.append(Job(selection_name(m, lr), m, lr, sweep.seeds[0], {"evaluation.split": "dev"}))
        echo("extending the grid by one step: " + ", ".join(f"{j.method} {j.learning_rate:g}" for j in extra))
        progress.total += len(extra)
        run_jobs(sweep, extra, progress, runner)
        read_dev(extra)
        for m, info in edges.items():
            chosen[m] = choose_learning_rate(dev[m])
            info["edge"] = grid_edge(list(dev[m]), chosen[m])
    for m, info in edges.items():
        if info["edge"]:
            echo(edge_warning(m, chosen[m], info["edge"], list(dev[m])), flush=True)
    echo("chosen on dev: " + ", ".join(f"{m} {lr:g}" for m, lr in chosen.items()), flush=True)
    run_jobs(sweep, plan_final(sweep, chosen), progress, runner)
    summary = summarize_sweep(sweep, chosen, dev, edges)
    summary["wall_seconds"] = round(time.perf_counter() - start, 1)
    table = format_sweep(summary)
    atomic_write_json(sweep.output_dir / SWEEP_FILE, summary)
    atomic_write_text(sweep.output_dir / SWEEP_TABLE, table)
    write_plots(summary, sweep.output_dir)
    echo(table, end="")
    return summary
