"""Read run folders into typed records for the report; every value keeps the file it came from.

A report input is a run folder (it has ``config.yaml``) or a folder of run folders (the demo's
output folder, any folder of runs): the run folders found up to two levels below it are used, in
name order. A ``badit sweep`` folder (it has ``sweep.json``) contributes its ``test/`` runs (the
chosen learning rate, every seed) and ``single/`` runs; its ``select/`` runs are scored on the dev
split at other learning rates and are left out.

Files read per run (formats: badit/experiments/folder.py, badit/training/callbacks.py, badit/analysis/report.py):

- ``metrics.json``: per-task scores, averages, ``run`` information, ``continual`` (matrix, AP...);
- ``logs/train_log.jsonl`` (multitask), ``tasks/<task>/logs/`` (single), ``stages/<NN>-<task>/logs/``
  (continual): Trainer log records, ``regroup.jsonl`` (one line per regroup) and
  ``router_health.jsonl`` (routing statistics at every logging step);
- ``analysis/analysis.json``: gradient conflict, expert usage and neuron overlap (``badit analyze``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from badit.errors import BaditError
from badit.names import METRICS

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
ANALYSIS_FILE = Path("analysis") / "analysis.json"
LOG_FILES = {"train": "train_log.jsonl", "regroup": "regroup.jsonl", "router": "router_health.jsonl"}
SWEEP_DEPTH = 2  # a folder of runs holds runs (depth 1) or groups of runs (depth 2)
SWEEP_FILE = "sweep.json"
SWEEP_REPORTED = ("test", "single")  # the sweep's sub-folders with test-split runs


class ReportError(BaditError, RuntimeError):
    """The report cannot be made from the folders given (one line: which folder, what to do)."""


@dataclass
class LogSegment:
    """The log records of one trained adapter (a continual stage, a single-task adapter, the multitask one).

    ``offset``: optimizer steps before this segment (continual stages are drawn one after another).
    """

    name: str
    folder: Path
    train: list[dict] = field(default_factory=list)
    regroup: list[dict] = field(default_factory=list)
    router: list[dict] = field(default_factory=list)
    offset: int = 0


@dataclass
class Run:
    path: Path
    name: str
    method: str
    setting: str
    model: str
    seed: int | None
    learning_rate: float | None
    split: str
    tasks: dict[str, dict[str, float]]
    average: dict[str, float]
    continual: dict | None
    segments: list[LogSegment]
    analysis: dict | None
    label: str = ""

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def analysis_file(self) -> Path:
        return self.path / ANALYSIS_FILE


def find_runs(inputs: list[str | Path]) -> list[Path]:
    """The run folders named by `inputs` (run folders, or folders of runs such as a sweep's)."""
    if not inputs:
        raise ReportError("give at least one run folder (or a sweep folder holding runs)")
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if not path.is_dir():
            raise ReportError(f"{path}: no such folder; give run folders written by `badit train`")
        if (path / CONFIG_FILE).is_file():
            found.append(path)
            continue
        if (path / SWEEP_FILE).is_file():
            below = [
                p.parent for part in SWEEP_REPORTED for p in sorted(path.glob(f"{part}/*/{CONFIG_FILE}"))
            ]
            if not below:
                raise ReportError(
                    f"{path}: a sweep without test runs yet; finish it with `badit sweep` first"
                )
            found += below
            continue
        below = sorted(
            {
                p.parent
                for depth in range(1, SWEEP_DEPTH + 1)
                for p in path.glob("/".join(["*"] * depth + [CONFIG_FILE]))
            }
        )
        if not below:
            raise ReportError(
                f"{path}: not a run folder (no {CONFIG_FILE}) and no run folder inside; "
                "give folders written by `badit train` or `badit sweep`"
            )
        found += below
    unique = list(dict.fromkeys(p.resolve() for p in found))
    return unique


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ReportError(
            f"{path}: cannot be read as JSON ({error}); re-run the step that writes it"
        ) from None
    if not isinstance(value, dict):
        raise ReportError(f"{path}: expected a JSON object; re-run the step that writes it")
    return value


def _read_jsonl(path: Path) -> list[dict]:
    """The JSON lines of `path` ([] when missing); a truncated last line (a run killed mid-write) is skipped."""
    if not path.is_file():
        return []
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise ReportError(
                f"{path}: line {i + 1} is not JSON; delete the file or re-run training"
            ) from None
    return records


def _segment(name: str, folder: Path) -> LogSegment:
    logs = folder / "logs"
    return LogSegment(
        name=name,
        folder=folder,
        train=_read_jsonl(logs / LOG_FILES["train"]),
        regroup=_read_jsonl(logs / LOG_FILES["regroup"]),
        router=_read_jsonl(logs / LOG_FILES["router"]),
    )


def _segments(path: Path, setting: str) -> list[LogSegment]:
    if setting == "single":
        folders = sorted(p for p in (path / "tasks").glob("*") if p.is_dir())
        return [_segment(p.name, p) for p in folders]
    if setting == "continual":
        folders = sorted(p for p in (path / "stages").glob("*") if p.is_dir() and p.name[:2].isdigit())
        segments, offset = [], 0
        for folder in folders:
            segment = _segment(folder.name, folder)
            segment.offset = offset
            offset += max((r.get("step", 0) for r in segment.train), default=0)
            segments.append(segment)
        return segments
    return [_segment("", path)]


def _read_config(path: Path) -> dict:
    import yaml

    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ReportError(f"{path}: not a readable YAML run config ({error})") from None
    return config if isinstance(config, dict) else {}


def _check_scores(path: Path, metrics: dict) -> None:
    tasks = metrics.get("tasks")
    if not isinstance(tasks, dict) or not tasks or not isinstance(metrics.get("average"), dict):
        raise ReportError(
            f"{path}: no per-task scores ('tasks' and 'average'); re-run `badit eval {path.parent}`"
        )
    for task, scores in tasks.items():
        for key in METRICS:
            if not isinstance(scores, dict) or not isinstance(scores.get(key), (int, float)):
                raise ReportError(
                    f"{path}: task {task!r} has no number for {key!r}; re-run `badit eval {path.parent}`"
                )


def load_run(path: str | Path) -> Run:
    """One run folder as a `Run`; ReportError when it is not a run or has no metrics yet."""
    path = Path(path)
    if not (path / CONFIG_FILE).is_file():
        raise ReportError(
            f"{path}: not a run folder (no {CONFIG_FILE}); give folders written by `badit train`"
        )
    metrics_path = path / METRICS_FILE
    if not metrics_path.is_file():
        raise ReportError(
            f"{path}: no {METRICS_FILE} yet (training or evaluation not finished); "
            f"finish it with `badit train {path} --resume` or `badit eval {path}`, or leave this run out"
        )
    metrics = _read_json(metrics_path)
    _check_scores(metrics_path, metrics)
    info = metrics.get("run") or {}
    setting = info.get("setting", "multitask")
    config = _read_config(path / CONFIG_FILE)
    analysis_path = path / ANALYSIS_FILE
    return Run(
        path=path,
        name=str(info.get("name", path.name)),
        method=str(info.get("method", "?")),
        setting=setting,
        model=str(info.get("model", "?")),
        seed=info.get("seed"),
        learning_rate=(config.get("training") or {}).get("learning_rate"),
        split=str((config.get("evaluation") or {}).get("split", "test")),
        tasks={
            t: {k: float(v) for k, v in s.items() if isinstance(v, (int, float))}
            for t, s in metrics["tasks"].items()
        },
        average={k: float(v) for k, v in metrics["average"].items()},
        continual=metrics.get("continual"),
        segments=_segments(path, setting),
        analysis=_read_json(analysis_path) if analysis_path.is_file() else None,
    )


def label_runs(runs: list[Run]) -> None:
    """Labels ``method (setting)``, with ``seed N`` and then the folder name added where two would be equal."""
    labels = [f"{r.method} ({r.setting})" for r in runs]
    for i, run in enumerate(runs):
        if labels.count(labels[i]) > 1 and run.seed is not None:
            labels[i] = f"{labels[i]} seed {run.seed}"
    for i, run in enumerate(runs):
        run.label = labels[i] if labels.count(labels[i]) == 1 else f"{labels[i]} {run.path.name}"


@dataclass
class Collection:
    runs: list[Run]
    shared_tasks: list[str]
    left_out: dict[str, list[str]]  # run label -> its tasks not shared by every run


def collect(inputs: list[str | Path]) -> Collection:
    """Load every run named by `inputs`; the tasks all runs share and, per run, the ones left out."""
    runs = [load_run(p) for p in find_runs(inputs)]
    label_runs(runs)
    shared = sorted(set.intersection(*(set(r.tasks) for r in runs)))
    if not shared:
        listing = "; ".join(f"{r.label}: {', '.join(sorted(r.tasks))}" for r in runs)
        raise ReportError(f"the runs share no task, nothing to compare ({listing}); report them separately")
    left_out = {r.label: sorted(set(r.tasks) - set(shared)) for r in runs}
    return Collection(runs, shared, {k: v for k, v in left_out.items() if v})
