"""The run folder: one object that owns its layout, the name of every file in it, one validated reader per
file, and the checks that keep two runs out of one folder. No other module spells a run file's name.

Run folder::

    RUN/.badit-run             the marker: badit created this folder (the only kind --overwrite deletes)
    RUN/config.yaml            the configuration as resolved (output_dir: where the run was created;
                               a run folder is read from where it is now, so it can be moved or copied),
                               under a first comment line with the sha256 of the rest (`CONFIG_HEADER`):
                               badit knows its own run's config (also in a copy without the marker) and
                               refuses one edited since
    RUN/.lock                  held (fcntl.flock) by the process writing the run (`RunLock`)
    RUN/metrics.json           per-task scores, averages, run information (+ continual metrics)
    RUN/predictions.jsonl      one line per evaluated example
    RUN/summary.md             the scores as a table
    RUN/analysis/              `badit analyze`: analysis.json and heatmaps
    RUN/adapter/, checkpoints/, logs/          (multitask: the run folder is its own stage)
    RUN/tasks/<task>/...                       (single: one stage per task)
    RUN/stages/<NN>-<task>/...                 (continual: one stage per task, in training order)
    RUN/stages/base/                           (continual: the untrained adapter's scores)

A stage folder (`StageFolder`) holds one trained adapter: ``adapter/``, ``checkpoints/``, ``logs/``
(train_log.jsonl, regroup.jsonl, router_health.jsonl, tensorboard/), its evaluation
(metrics.json, predictions.jsonl) and, once adapter and evaluation are complete, ``done.json``.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import hashlib
import json
import math
import os
import pickle
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from badit.errors import BaditError
from badit.names import METRICS

if TYPE_CHECKING:
    from badit.experiments.config import RunConfig
    from badit.training.trainer import StagePaths

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.jsonl"
SUMMARY_FILE = "summary.md"
DONE_FILE = "done.json"  # written in a stage folder once its adapter and evaluation are complete
ADAPTER_CONFIG_FILE = "adapter_config.json"  # PEFT's: present once an adapter has been saved
MARKER_FILE = ".badit-run"  # written first when badit creates a run folder: {"badit_run": MARKER_VERSION}
MARKER_VERSION = 1
LOCK_FILE = ".lock"  # `RunLock`: held (fcntl.flock) by the one process writing a run or sweep folder
ADAPTER_DIR, CHECKPOINT_DIR, LOG_DIR, TENSORBOARD_DIR = "adapter", "checkpoints", "logs", "tensorboard"
TASKS_DIR, STAGES_DIR, BASE_STAGE, ANALYSIS_DIR = "tasks", "stages", "base", "analysis"
ANALYSIS_FILE = "analysis.json"  # in ANALYSIS_DIR, written by `badit.analysis.analyze`
MERGE_FILE = "merge.json"  # a `badit merge` run: what was merged and how (experiments.merge.merge_loaded)
LOG_FILES = {"train": "train_log.jsonl", "regroup": "regroup.jsonl", "router": "router_health.jsonl"}
SWEEP_FILE, SWEEP_TABLE, SWEEP_LOG_DIR = "sweep.json", "sweep.md", "logs"  # a `badit sweep` folder's own
METRIC_NAMES = METRICS  # the scores every metrics.json holds
SCORING_FIELDS = ("split", "max_examples_per_task", "max_new_tokens", "stop_at_newline")
"""The evaluation settings that change scores (batch_size does not): recorded in metrics.json."""


CONFIG_HEADER = "# written by badit for the run in this folder; sha256 of the lines below: "
_CONFIG_HEADER_RE = re.compile(re.escape(CONFIG_HEADER) + r"([0-9a-f]{64})\n")
RUN_CONTENTS = (ADAPTER_DIR, CHECKPOINT_DIR, LOG_DIR, METRICS_FILE, TASKS_DIR, STAGES_DIR)
"""What only a run folder holds beside its config (a folder holding just a config.yaml is a template)."""

_TRUST_REMOTE_CODE = contextvars.ContextVar("badit_trust_remote_code", default=False)


@contextmanager
def trusting_remote_code(trust: bool = True) -> Iterator[None]:
    """While inside, a run folder's ``model.trust_remote_code: true`` is accepted (`RunFolder.config`):
    the command line said so (``--trust-remote-code``)."""
    token = _TRUST_REMOTE_CODE.set(trust)
    try:
        yield
    finally:
        _TRUST_REMOTE_CODE.reset(token)


class RunLock:
    """An advisory lock on a run (or sweep) folder: ``fcntl.flock`` (exclusive, non-blocking) on
    ``FOLDER/.lock``, which holds the holder's pid, taken before a process writes the folder and held
    until it is done. A second writer (a ``--resume`` of a live run, an ``--overwrite`` that would delete
    it, a second sweep into one folder) is refused in one line naming the holder's pid. The kernel drops
    the lock when the holder dies (SIGKILL included), so a stale lock file never blocks. Advisory: only
    processes that take it are kept out (all badit writers do); flock does not work across the machines
    of some network file systems."""

    def __init__(self, folder: str | Path, what: str = "run"):
        self.folder, self.what = Path(folder), what
        self.path = self.folder / LOCK_FILE
        self._fd: int | None = None

    @classmethod
    def for_reading(cls, folder: str | Path):
        """The lock of a run that a command only reads (export, eval into another folder): taken where the
        folder is writable; a read-only run (a copy from elsewhere) is read without one, as no badit
        process of this user can be writing it."""
        return cls(folder) if os.access(folder, os.W_OK | os.X_OK) else contextlib.nullcontext()

    def holder(self) -> str:
        """The pid written by the holder ("unknown" if the file says nothing)."""
        try:
            return self.path.read_text(encoding="ascii").strip() or "unknown"
        except (OSError, UnicodeDecodeError):
            return "unknown"

    def acquire(self) -> RunLock:
        import fcntl

        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunError(
                f"{self.folder}: another badit process (pid {self.holder()}) is writing this {self.what}; "
                "wait until it ends (or stop it), then rerun"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _entries(folder: Path) -> list[Path]:
    """The entries of ``folder`` but its lock file (a folder holding only a lock is empty)."""
    return [p for p in folder.iterdir() if p.name != LOCK_FILE]


def config_text(config: RunConfig) -> str:
    """config.yaml as a run folder holds it: `CONFIG_HEADER` with the sha256 of the YAML, then the YAML."""
    body = config.to_yaml()
    return f"{CONFIG_HEADER}{hashlib.sha256(body.encode('utf-8')).hexdigest()}\n{body}"


# This module imports no torch (badit report reads run folders without it): the writers come from
# badit.data.files, whose package imports torch, only when something is written.


def _write_json(path: Path, data) -> None:
    from badit.data.files import atomic_write_json

    atomic_write_json(path, data)


def _write_text(path: Path, text: str) -> None:
    from badit.data.files import atomic_write_text

    atomic_write_text(path, text)


class RunError(BaditError, RuntimeError):
    """A run folder cannot be used as asked (exists, config differs, incomplete...)."""


def is_number(value) -> bool:
    """A JSON/YAML number (bool is an int to Python, not a number here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


AVERAGE_TOLERANCE = 0.01
"""How far a metrics.json's average may be from the mean of its (rounded) per-task scores: scores are
written with 4 decimals (badit.evaluation.scoring), so rounding moves the mean by at most 5e-5."""


def metrics_problem(metrics) -> str | None:
    """What keeps ``metrics`` from being a metrics.json as `RunFolder.write_results` writes it (per-task
    and average numbers for every metric of ``METRIC_NAMES``, continual metrics where present), None if
    nothing. The one check of a metrics.json's shape: every reader goes through `StageFolder.metrics`."""
    if not isinstance(metrics, dict):
        return f"the top level is a {type(metrics).__name__}, not an object"
    for key in ("tasks", "average"):
        if not isinstance(metrics.get(key), dict):
            return f"'{key}' is missing or not an object"
    if not metrics["tasks"]:
        return "'tasks' holds no task"
    scores = {f"tasks.{t}": s for t, s in metrics["tasks"].items()} | {"average": metrics["average"]}
    for where, values in scores.items():
        if not isinstance(values, dict):
            return f"'{where}' is not an object"
        for metric in METRIC_NAMES:
            value = values.get(metric)
            if not is_number(value):
                return f"'{where}.{metric}' is missing or not a number"
            if not (math.isfinite(value) and 0 <= value <= 100):  # NaN, 1e308, negative: no score
                return f"'{where}.{metric}' is {value}, not a score between 0 and 100"
    for metric in METRIC_NAMES:
        mean = math.fsum(s[metric] for s in metrics["tasks"].values()) / len(metrics["tasks"])
        if abs(mean - metrics["average"][metric]) > AVERAGE_TOLERANCE:
            return (
                f"'average.{metric}' is {metrics['average'][metric]} but its tasks' mean is {mean:.4g}: the "
                "file was edited"
            )
    continual = metrics.get("continual")
    if continual is not None:
        from badit.evaluation.continual import CONTINUAL_KEYS  # only here: badit.evaluation imports torch

        for metric in METRIC_NAMES:
            values = continual.get(metric) if isinstance(continual, dict) else None
            if not isinstance(values, dict) or not all(
                values.get(key) is None or is_number(values[key]) for key in CONTINUAL_KEYS
            ):
                return (
                    f"'continual.{metric}' does not hold the continual metrics ({', '.join(CONTINUAL_KEYS)})"
                )
    return None


JSON_LIMIT = 64 << 20
"""The largest JSON file of a run folder read (64 MiB): badit's metrics.json, done.json and merge.json
are kilobytes; analysis.json at the paper's 15 tasks and 210 layers a few megabytes."""

JSONL_LIMIT = 1 << 30
"""The largest JSON-lines file read (1 GiB): predictions of 15 tasks x 1,000 examples are ~15 MB; a
router-health log of 210 layers x 10,000 steps is ~500 MB. A stranger's 2 GB (sparse) file is refused
before it is read."""


def _read_limited(path: Path, limit: int, fix: str) -> str:
    """The text of ``path`` unless it is larger than ``limit`` bytes or not UTF-8 (a `RunError` ending
    with ``fix``)."""
    size = path.stat().st_size
    if size > limit:
        raise RunError(f"{path}: {size:,} bytes, more than badit writes there ({limit:,} at most); {fix}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise RunError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start}); {fix}") from None


def _matrix(value, shape: tuple[int, ...]) -> bool:
    """Whether ``value`` is nested lists of numbers (None allowed) of exactly ``shape``."""
    if not shape:
        return value is None or is_number(value)
    return isinstance(value, list) and len(value) == shape[0] and all(_matrix(v, shape[1:]) for v in value)


def analysis_problem(analysis) -> str | None:
    """What keeps ``analysis`` from being an analysis.json as `badit analyze` writes it, in the parts the
    report reads (task list, conflict and overlap matrices T x T, expert usage L x T x K, the routing
    verdict); None if nothing."""
    if not isinstance(analysis, dict):
        return "the top level is not an object"
    tasks = analysis.get("tasks", [])
    if not (isinstance(tasks, list) and all(isinstance(t, str) for t in tasks)):
        return "'tasks' is not a list of task names"
    square = (len(tasks), len(tasks))
    for key, matrix in (("gradient_conflict", "overall"), ("neuron_overlap", "mean_jaccard")):
        part = analysis.get(key)
        if part is not None and not (isinstance(part, dict) and _matrix(part.get(matrix), square)):
            return f"'{key}.{matrix}' is not a {len(tasks)} x {len(tasks)} matrix of numbers"
    usage = analysis.get("expert_usage")
    if usage is not None:
        layers = usage.get("layers") if isinstance(usage, dict) else None
        values = usage.get("usage") if isinstance(usage, dict) else None
        try:
            experts = len(values[0][0])
        except (TypeError, IndexError, KeyError):
            experts = 0
        if not (
            isinstance(layers, list)
            and layers
            and experts
            and _matrix(values, (len(layers), len(tasks), experts))
        ):
            return "'expert_usage' does not hold layers and a layers x tasks x experts usage array"
    separability = analysis.get("router_separability")
    if separability is not None and not (
        isinstance(separability, dict) and isinstance(separability.get("verdict"), str)
    ):
        return "'router_separability' has no verdict"
    return None


def read_json(path: Path, fix: str, what: str = "JSON"):
    """The JSON value of a run file ``path``, read within `JSON_LIMIT`; a `RunError` ("not ``what``",
    ending with ``fix``) for a file too large, not UTF-8, not JSON or nested too deeply for Python's parser."""
    text = _read_limited(path, JSON_LIMIT, fix)
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise RunError(f"{path}: not {what} ({error}); {fix}") from None
    except RecursionError:
        raise RunError(f"{path}: nested too deeply to be a file badit wrote; {fix}") from None


def read_jsonl(path: Path, tolerate_torn_tail: bool = False) -> list[dict]:
    """The JSON lines of ``path``. With ``tolerate_torn_tail`` (logs: appended while training), a missing
    file is [] and a truncated last line (a run killed mid-write) is skipped; any other bad line, a file
    over `JSONL_LIMIT` or a line nested too deeply is a ``RunError`` naming the file (and line)."""
    if tolerate_torn_tail and not path.is_file():
        return []
    fix = "delete the file or re-run the step that wrote it"
    lines = [line for line in _read_limited(path, JSONL_LIMIT, fix).splitlines() if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except RecursionError:
            raise RunError(
                f"{path}: line {i + 1} is nested too deeply to be a record badit wrote; {fix}"
            ) from None
        except json.JSONDecodeError:
            if tolerate_torn_tail and i == len(lines) - 1:
                break
            raise RunError(
                f"{path}: line {i + 1} is not JSON; delete the file or re-run the step that wrote it"
            ) from None
    return records


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _differences(x, y, f"{prefix}{key}.")
        elif x != y:
            out.append(f"{prefix}{key}: {x!r} (saved) vs {y!r} (now)")
    return out


def _child(*names: str) -> property:
    """A read-only attribute: the path ``names`` below the folder (the layout, spelled once)."""
    return property(lambda self: self.path.joinpath(*names))


@dataclass(frozen=True)
class StageFolder:
    """The folder of one trained adapter (the multitask run folder itself, ``tasks/<t>``, ``stages/NN-<t>``)."""

    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    @property
    def name(self) -> str:
        return self.path.name

    adapter = _child(ADAPTER_DIR)
    checkpoints = _child(CHECKPOINT_DIR)
    logs = _child(LOG_DIR)
    metrics_file = _child(METRICS_FILE)
    predictions_file = _child(PREDICTIONS_FILE)
    done_file = _child(DONE_FILE)

    def log_file(self, kind: str) -> Path:
        """``logs/<file>`` of ``kind`` in ``LOG_FILES`` (train, regroup, router)."""
        return self.logs / LOG_FILES[kind]

    def training_paths(self) -> StagePaths:
        """Where `badit.training.trainer.train_stage` writes this stage's adapter and logs."""
        from badit.training.trainer import StagePaths

        return StagePaths(
            folder=self.path,
            adapter=self.adapter,
            train_log=self.log_file("train"),
            regroup_log=self.log_file("regroup"),
            router_log=self.log_file("router"),
            tensorboard=self.logs / TENSORBOARD_DIR,
        )

    # -- readers (one per file) ------------------------------------------------------------------

    def has_metrics(self) -> bool:
        return self.metrics_file.is_file()

    def is_complete(self) -> bool:
        """Whether the run was trained, evaluated and its results written: summary.md is the last file
        `RunFolder.write_results` writes (after metrics.json with the run's information and the model cards;
        a multitask run's evaluation alone already writes a metrics.json)."""
        return (self.path / SUMMARY_FILE).is_file() and self.has_metrics()

    def metrics(self, run: Path | None = None) -> dict:
        """metrics.json, its shape checked (`metrics_problem`); ``RunError`` naming the file and the fix
        (``badit eval RUN``, RUN = ``run`` or this folder) when it is missing, not JSON or of another shape."""
        run = run or self.path
        path = self.metrics_file
        if not path.is_file():
            raise RunError(
                f"{self.path}: no {METRICS_FILE} yet (training or evaluation not finished); finish it with "
                f"`badit train {run} --resume` or `badit eval {run}`"
            )
        metrics = read_json(path, f"`badit eval {run}` rewrites it", "a badit metrics file")
        problem = metrics_problem(metrics)
        if problem:
            raise RunError(f"{path}: not a badit metrics file ({problem}); `badit eval {run}` rewrites it")
        return metrics

    def predictions(self) -> list[dict]:
        """predictions.jsonl: one record per evaluated example (task, id, prediction, references, scores)."""
        return read_jsonl(self.predictions_file)

    def logs_of(self, kind: str) -> list[dict]:
        """The records of one log (``LOG_FILES``); [] when missing, a torn last line skipped."""
        return read_jsonl(self.log_file(kind), tolerate_torn_tail=True)

    def done(self) -> dict | None:
        """The record of a finished stage (adapter saved and evaluated), None if it is not finished."""
        path = self.done_file
        if not path.is_file():
            return None
        record = read_json(path, "delete it; `badit train RUN --resume` redoes the stage's evaluation")
        if not isinstance(record, dict):
            raise RunError(f"{path}: not a stage record (an object); delete it and resume the run")
        return record

    # -- writers ---------------------------------------------------------------------------------

    def mark_done(self, record: dict) -> None:
        _write_json(self.done_file, record)


class RunFolder(StageFolder):
    """A run folder: its stages, config.yaml, marker, results; see the module docstring for the layout."""

    config_file = _child(CONFIG_FILE)
    summary_file = _child(SUMMARY_FILE)
    marker_file = _child(MARKER_FILE)
    merge_file = _child(MERGE_FILE)

    def merge_record(self) -> dict | None:
        """merge.json of a `badit merge` run (what was merged, how), None for a trained run."""
        if not self.merge_file.is_file():
            return None
        record = read_json(self.merge_file, "merge the run again", "a badit merge record")
        if not isinstance(record, dict) or not isinstance(record.get("method"), str):
            raise RunError(f"{self.merge_file}: not a badit merge record (no method); merge the run again")
        return record

    analysis_dir = _child(ANALYSIS_DIR)
    analysis_file = _child(ANALYSIS_DIR, ANALYSIS_FILE)

    def analysis(self) -> dict | None:
        """analysis/analysis.json (`badit analyze`), None when the run has none."""
        path = self.analysis_file
        if not path.is_file():
            return None
        fix = f"run `badit analyze {self.path}` again"
        value = read_json(path, fix)
        problem = analysis_problem(value)
        if problem:
            raise RunError(f"{path}: not what `badit analyze` writes ({problem}); {fix}")
        return value

    # -- layout ----------------------------------------------------------------------------------

    def task_stage(self, task: str) -> StageFolder:
        """Setting single: the stage of ``task``'s own adapter."""
        return StageFolder(self.path / TASKS_DIR / task)

    def continual_stage(self, index: int, task: str) -> StageFolder:
        """Setting continual: stage ``index`` (0-based), training ``task``."""
        return StageFolder(self.path / STAGES_DIR / f"{index:02d}-{task}")

    @property
    def base_stage(self) -> StageFolder:
        """Setting continual: the untrained adapter's evaluation (baseline of forward transfer)."""
        return StageFolder(self.path / STAGES_DIR / BASE_STAGE)

    def stages(self, setting: str) -> list[StageFolder]:
        """The stage folders that exist, in order: the run itself (multitask), ``tasks/*`` by name (single),
        ``stages/NN-*`` in training order (continual; not the base evaluation)."""
        if setting == "single":
            root = self.path / TASKS_DIR
            return [StageFolder(p) for p in sorted(root.glob("*")) if p.is_dir()]
        if setting == "continual":
            root = self.path / STAGES_DIR
            return [StageFolder(p) for p in sorted(root.glob("*")) if p.is_dir() and p.name[:2].isdigit()]
        return [self]

    def final_adapter(self, config: RunConfig) -> Path:
        """The adapter a multitask run trained, or the last stage's of a continual run."""
        if config.setting == "single":
            raise RunError(
                f"{self.path} is a single-task run: it has one adapter per task, under {TASKS_DIR}/<task>/{ADAPTER_DIR}"
            )
        if config.setting == "continual":
            stages = self.stages("continual")
            if not stages:
                raise RunError(f"{self.path}: no finished stage (`badit train {self.path} --resume`)")
            return stages[-1].adapter
        return self.adapter

    def require_adapter(self, adapter_dir: Path) -> Path:
        """``adapter_dir`` if it holds a trained adapter, else a ``RunError`` that says how to finish the run."""
        if not (adapter_dir / ADAPTER_CONFIG_FILE).is_file():
            raise RunError(
                f"{adapter_dir}: no trained adapter (did the run finish? `badit train {self.path} --resume`)"
            )
        return adapter_dir

    def training_started(self) -> bool:
        """Whether a training step of the run has been logged or checkpointed (in any stage)."""
        return any(self.path.rglob(LOG_FILES["train"])) or any(self.path.rglob("checkpoint-*"))

    def router_logs(self) -> list[Path]:
        """Every stage's router_health.jsonl (one per trained adapter), in path order."""
        return sorted(self.path.glob(f"**/{LOG_DIR}/{LOG_FILES['router']}"))

    # -- config.yaml -----------------------------------------------------------------------------

    def has_config(self) -> bool:
        return self.config_file.is_file()

    def saved_config(self) -> dict:
        """config.yaml as plain data, unchecked: for readers that show a few fields of runs made by other
        badit versions without building a RunConfig (``badit report``, which imports no torch); {} when it
        is not a mapping. Everything that runs a model uses `config`."""
        from badit.experiments.yamlfile import YamlError, load_yaml

        try:
            data = load_yaml(self.config_file)
        except YamlError as error:
            raise RunError(f"{error.one_line()} (not a readable run config)") from None
        return data if isinstance(data, dict) else {}

    def config(self, overrides=()) -> RunConfig:
        """config.yaml read by ``load_config`` (its errors, ``overrides`` as there), with ``output_dir``
        the folder where the run is now: a moved or copied run works in its new place and never writes to
        the old one. Checked first against its header (`check_config_file`); a ``model.trust_remote_code:
        true`` in it is refused unless the command line says so (`check_remote_code`)."""
        from badit.experiments.config import load_config

        if not self.has_config():
            raise RunError(
                f"{self.path}: not a run folder (no {CONFIG_FILE}); run `badit train CONFIG` first"
            )
        self.check_config_file()
        config = load_config(self.config_file, overrides)
        self.check_remote_code(config, overrides)
        return dataclasses.replace(config, output_dir=str(self.path.resolve()))

    def config_written_by_badit(self) -> bool:
        """Whether config.yaml starts with `CONFIG_HEADER` (badit wrote it for this run)."""
        try:
            with open(self.config_file, encoding="utf-8") as f:
                first = f.readline()
        except (OSError, UnicodeDecodeError):
            return False
        return bool(_CONFIG_HEADER_RE.fullmatch(first))

    def check_config_file(self) -> None:
        """A ``RunError`` when config.yaml no longer matches the sha256 in its header (edited or damaged
        since badit wrote it). A config.yaml without the header (an older badit) is taken as it is."""
        try:
            text = self.config_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return  # load_config names the problem
        match = _CONFIG_HEADER_RE.match(text)
        if match is None:
            return
        body = text[match.end() :]
        if hashlib.sha256(body.encode("utf-8")).hexdigest() != match.group(1):
            raise RunError(
                f"{self.config_file} was changed after badit wrote it (its sha256 does not match its first "
                "line): restore it from where you got the run, or train a new run from an edited copy "
                "(`badit train EDITED.yaml`); overrides on the command line change a run without editing it"
            )

    def check_remote_code(self, config: RunConfig, overrides=()) -> None:
        """A ``RunError`` when the run's config says ``model.trust_remote_code: true`` and the command line
        did not (``--trust-remote-code``, or ``model.trust_remote_code=true`` where overrides are taken):
        a run folder from elsewhere would otherwise run its model folder's Python code unasked."""
        given = any(str(o).split("=", 1)[0].strip() == "model.trust_remote_code" for o in overrides)
        if config.model.trust_remote_code and not (given or _TRUST_REMOTE_CODE.get()):
            raise RunError(
                f"{self.config_file}: model.trust_remote_code is true, which runs Python code from the model "
                f"{config.model.name_or_path}; if you trust it, pass --trust-remote-code (train: or "
                "model.trust_remote_code=true)"
            )

    def holds_run(self) -> bool:
        """Whether this folder is a badit run: marked, or (a copy that lost the hidden marker) its
        config.yaml was written by badit and it holds a run's files (`RUN_CONTENTS`)."""
        return self.is_run() or (self.config_written_by_badit() and self.has_run_contents())

    def has_run_contents(self) -> bool:
        return any((self.path / name).exists() for name in RUN_CONTENTS)

    # -- the marker, creating and deleting -------------------------------------------------------

    def is_run(self) -> bool:
        """Whether badit created this folder as a run folder (it holds a valid marker file)."""
        try:
            data = json.loads(self.marker_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return isinstance(data, dict) and isinstance(data.get("badit_run"), int)

    def mark(self) -> None:
        """Write the marker that makes this folder a badit run folder (one ``--overwrite`` may delete)."""
        _write_json(self.marker_file, {"badit_run": MARKER_VERSION})

    def remove(self, keep_lock: bool = False) -> None:
        """Delete the run folder, only if badit marked it as one: no code path removes a user's files.
        ``keep_lock``: everything but the lock file, which this process holds (``--overwrite``: a
        process that waits for the lock must not find a new lock file and think the folder free)."""
        folder = self.path
        if folder.is_symlink() or not self.is_run():
            raise RunError(
                f"{folder}: not marked as a badit run (no valid {MARKER_FILE}); badit deletes only folders it "
                "created: delete it yourself or choose another output_dir"
            )
        if not keep_lock:
            shutil.rmtree(folder)
            return
        for entry in _entries(folder):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()

    def remove_lock_only_folder(self) -> None:
        """Remove this folder if it holds nothing but a lock file (a start refused before anything was
        written leaves no empty folder behind)."""
        if self.path.is_dir() and not _entries(self.path):
            (self.path / LOCK_FILE).unlink(missing_ok=True)
            self.path.rmdir()

    def check_writable(self) -> None:
        """A ``RunError`` naming the fix when this path cannot hold a run folder: it is a file, lies under a
        file, or its nearest existing folder is not writable. Cheap: called before data or model is loaded."""
        run_dir = self.path
        fix = "set output_dir (or --output) to a folder you can write"
        if run_dir.exists() and not run_dir.is_dir():
            raise RunError(f"output_dir {run_dir} is a file, not a folder; {fix}")
        existing = run_dir
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise RunError(f"output_dir {run_dir} lies under {existing}, which is a file; {fix}")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise RunError(f"output_dir {run_dir}: {existing} is not writable (permissions); {fix}")

    def prepare(self, config: RunConfig, resume: bool = False, overwrite: bool = False) -> None:
        """Check the folder and write config.yaml (main process only); refuses to mix two runs in one folder."""
        self._check_reuse(config, resume, overwrite)
        self.path.mkdir(parents=True, exist_ok=True)
        if not self.is_run():  # a new run, or one resumed with the same config (badit wrote it)
            self.mark()
        _write_text(self.config_file, config_text(config))

    def _check_reuse(self, config: RunConfig, resume: bool, overwrite: bool) -> None:
        run_dir, saved = self.path, self.config_file
        self.check_writable()
        if overwrite and run_dir.is_dir() and _entries(run_dir):
            if not self.is_run():
                raise RunError(
                    f"{run_dir} is not a folder badit created (no {MARKER_FILE}), so --overwrite will not "
                    "delete it; choose another output_dir (or delete the folder yourself)"
                )
            self.remove(keep_lock=True)
        elif saved.is_file():
            if resume and self.merge_file.is_file():
                raise RunError(
                    f"{run_dir} was made by `badit merge`, not trained: there is nothing to resume; "
                    f"`badit eval {run_dir}` evaluates it again"
                )
            if not resume:
                raise RunError(
                    f"{run_dir} already holds a run; pass --resume to continue it, --overwrite to replace it, "
                    "or set output_dir to another folder"
                )
            with trusting_remote_code():  # only compared: the config given (the user's) decides what runs
                before = self.config().to_dict()
            now = config.to_dict()
            self._check_scoring_kept(before["evaluation"], now["evaluation"])
            # evaluation settings may change on resume, and the run folder may have been moved or copied
            for key in ("evaluation", "output_dir"):
                before.pop(key), now.pop(key)
            diff = _differences(before, now)
            if diff:
                raise RunError(
                    f"{saved} differs from the config given to --resume: {'; '.join(diff)}. "
                    f"Resume with the same config (e.g. `badit train {run_dir} --resume`) or use another output_dir"
                )
        elif run_dir.exists() and _entries(run_dir) and not self.is_run():
            raise RunError(
                f"{run_dir} exists and is not empty (and is not a badit run): choose another output_dir"
            )

    def _check_scoring_kept(self, before: dict, now: dict) -> None:
        """On resume, evaluation settings that change scores (`SCORING_FIELDS`) may change only while
        nothing is scored yet: a continual run's score matrix (or a finished run's metrics) would mix
        stages scored one way with stages scored another."""
        changed = [
            f"evaluation.{k}: {before.get(k)!r} -> {now.get(k)!r}"
            for k in SCORING_FIELDS
            if before.get(k) != now.get(k)
        ]
        scored = [
            self.metrics_file,
            *self.path.glob(f"{TASKS_DIR}/*/{METRICS_FILE}"),
            *self.path.glob(f"{STAGES_DIR}/*/{METRICS_FILE}"),
        ]
        if changed and any(path.is_file() for path in scored):
            raise RunError(
                f"{self.path} has stages scored with its own evaluation settings; resuming with {'; '.join(changed)} "
                "would mix two kinds of scores in one run: resume without the change, then score the run again "
                f"with `badit eval {self.path} {changed[0].split(':')[0]}=... --output NEW_FOLDER`"
            )

    # -- results ---------------------------------------------------------------------------------

    def write_results(self, config: RunConfig, metrics: dict, info: dict) -> dict:
        """metrics.json (with the run's information), the adapters' model cards and summary.md; returns
        the metrics written."""
        from badit.experiments.results import summary_table

        run_info = _run_info(config, self.merge_record())
        metrics = {**metrics, "run": {**info, **run_info}}
        _write_json(self.metrics_file, metrics)
        self._cards_with_scores(config, metrics)
        _write_text(
            self.summary_file,
            summary_table(metrics, f"{config.name}: {run_info['method']}, {config.setting}"),
        )
        return metrics

    def _cards_with_scores(self, config: RunConfig, metrics: dict) -> None:
        """Put the tasks trained and their ROUGE-L into the model card of the run's BADIT adapter(s)."""
        from peft import PeftConfig

        from badit.adapter import BaditConfig
        from badit.adapter.card import write_model_card

        scores = {task: values.get("rougeL") for task, values in metrics.get("tasks", {}).items()}
        if config.setting == "single":
            adapters = {self.task_stage(task).adapter: {task: score} for task, score in scores.items()}
        elif config.setting == "continual" and not self.stages("continual"):
            return
        else:
            adapters = {self.final_adapter(config): scores}
        for adapter_dir, tasks in adapters.items():
            if (adapter_dir / ADAPTER_CONFIG_FILE).is_file():
                adapter_config = PeftConfig.from_pretrained(str(adapter_dir))
                if isinstance(adapter_config, BaditConfig):
                    write_model_card(adapter_dir, adapter_config, tasks=tasks)

    # -- the trained model -----------------------------------------------------------------------

    def load_trained(
        self, config: RunConfig, adapter_dir: Path | None = None, trainable: bool = False
    ) -> tuple:
        """(model, tokenizer): the run's base model with a trained adapter (default: `final_adapter`).
        The adapter folder's integrity is checked first (manifest, readable and finite weights), then the
        base model and the adapter are loaded."""
        from badit.experiments.stage import load_base_model

        adapter_dir = self.require_adapter(adapter_dir or self.final_adapter(config))
        fix = f"restore the folder or train it again (`badit train {self.path} --resume`)"
        return load_adapter(lambda: load_base_model(config), adapter_dir, fix, trainable)


def load_adapter(load_base, adapter_dir: Path, fix: str, trainable: bool = False) -> tuple:
    """(model, tokenizer): ``load_base()``'s (model, tokenizer) with the adapter of ``adapter_dir`` (eval
    mode unless ``trainable``). The folder is checked before anything is loaded
    (`badit.adapter.integrity.check_adapter_folder`); weights that cannot be read are a ``RunError``
    ending with ``fix``."""
    import torch
    from peft import PeftModel
    from safetensors import SafetensorError

    from badit.adapter.integrity import (
        MANIFEST_FILE,
        UnreadableWeightsError,
        check_adapter_folder,
        has_manifest,
    )
    from badit.training.continual import is_continual_folder, load_continual_adapter

    damaged = f"{adapter_dir}: the adapter's weights are damaged or truncated"
    try:
        check_adapter_folder(adapter_dir)  # not what was saved (manifest), unreadable or not finite
    except UnreadableWeightsError as error:
        raise RunError(f"{damaged} ({error.reason}); {fix}") from None
    base, tokenizer = load_base()
    try:
        if is_continual_folder(adapter_dir):  # O-LoRA/InfLoRA: plain LoRA; GainLoRA: its gates too
            model = load_continual_adapter(base, adapter_dir, is_trainable=trainable)
        else:
            model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=trainable)
    except SafetensorError as error:
        raise RunError(f"{damaged} ({error}); {fix}") from None
    except pickle.UnpicklingError:
        raise RunError(
            f"{adapter_dir}: its weights file is a pickle that torch's safe loader refuses (loading it could run "
            f"code); badit saves adapters as safetensors: {fix}"
        ) from None
    except torch.OutOfMemoryError:
        raise
    except (ValueError, KeyError, TypeError, RuntimeError) as error:
        # PEFT's errors for an adapter_config.json edited by hand (weights of another shape, an invalid
        # value, an unknown adapter type) or written for another base model: one line, not a traceback
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        detail = " ".join(lines[:2])[:300] or type(error).__name__
        checked = "" if has_manifest(adapter_dir) else f" (it has no {MANIFEST_FILE} to check it against)"
        raise RunError(
            f"{adapter_dir}: the adapter does not load ({type(error).__name__}: {detail}); its "
            f"{ADAPTER_CONFIG_FILE} was edited, or does not match its weights or this base model{checked}: {fix}"
        ) from None
    if not is_continual_folder(adapter_dir):  # continual stages keep their own formats
        _check_all_tensors_loaded(model, adapter_dir, fix)
    return (model if trainable else model.eval()), tokenizer


def _check_all_tensors_loaded(model, adapter_dir: Path, fix: str) -> None:
    """A RunError when the adapter's weights file lacks tensors the adapter has: PEFT loads such a file
    without a word and the missing tensors keep their fresh values, so an untrained adapter would be
    scored, exported or merged as if trained (an emptied safetensors file, a manifest removed)."""
    from peft import PeftModel, get_peft_model_state_dict
    from safetensors import safe_open

    from badit.adapter.integrity import ADAPTER_WEIGHTS

    weights = adapter_dir / ADAPTER_WEIGHTS
    if not isinstance(model, PeftModel) or not weights.is_file():
        return  # a .bin file: PEFT's loader reads it
    with safe_open(str(weights), framework="pt") as f:
        saved = set(f.keys())
    expected = set(get_peft_model_state_dict(model))
    missing = sorted(expected - saved)
    if missing:
        raise RunError(
            f"{weights}: lacks {len(missing)} of the adapter's {len(expected)} tensors (e.g. {missing[0]}), so it "
            f"would load as an untrained adapter: {fix}"
        )


def is_run_dir(folder: str | Path) -> bool:
    """Whether badit created ``folder`` as a run folder (`RunFolder.is_run`)."""
    return RunFolder(folder).is_run()


def resolve_paths(config: RunConfig) -> RunConfig:
    """The config with its local paths made absolute (relative ones are relative to the current folder),
    so that the saved config.yaml works from anywhere (``badit eval RUN``, ``--resume``)."""

    def absolute(path: str | None, must_exist: bool) -> str | None:
        if path is None or (must_exist and not Path(path).exists()):
            return path  # e.g. a hub name or the embedded model's name
        return str(Path(path).expanduser().resolve())

    return dataclasses.replace(
        config,
        output_dir=absolute(config.output_dir, must_exist=False),
        model=dataclasses.replace(
            config.model, name_or_path=absolute(config.model.name_or_path, must_exist=True)
        ),
        data=dataclasses.replace(config.data, path=absolute(config.data.path, must_exist=True)),
        training=dataclasses.replace(
            config.training, deepspeed=absolute(config.training.deepspeed, must_exist=True)
        ),
    )


def method_label(config: RunConfig, merge: dict | None = None) -> str:
    """The method as compare and report name a run: ``method.name``, then ``+pcgrad`` when trained with
    gradient surgery and ``+ties`` / ``+task-arithmetic`` for a ``badit merge`` run, so that such runs
    are never grouped with (or taken for seeds of) the plain method."""
    label = config.method.name
    if config.training.gradient_surgery != "none":
        label += f"+{config.training.gradient_surgery}"
    if merge:
        label += f"+{merge['method']}"
    return label


def base_method(label: str) -> str:
    """``method.name`` of a run labelled ``label`` by `method_label` (``lora+ties`` -> ``lora``)."""
    return label.partition("+")[0]


def _run_info(config: RunConfig, merge: dict | None = None) -> dict:
    from badit.training.methods import effective_scale

    return {
        "name": config.name,
        "method": method_label(config, merge),
        "base_method": config.method.name,
        "gradient_surgery": config.training.gradient_surgery,
        "setting": config.setting,
        "model": config.model.name_or_path,
        "seed": config.seed,
        "data": config.data.path,
        "learning_rate": config.training.learning_rate,
        "effective_scale": effective_scale(config.method),
        # what the scores were computed on (a resume may not change it once something is scored)
        "evaluation": {field: getattr(config.evaluation, field) for field in SCORING_FIELDS},
    }
