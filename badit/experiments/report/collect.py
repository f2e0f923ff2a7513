"""Read run folders into typed records for the report; every value keeps the file it came from.

A report input is a run folder (it has ``config.yaml``) or a folder of run folders (the demo's
output folder, any folder of runs): the run folders found up to two levels below it are used, in
name order. A ``badit sweep`` folder (it has ``sweep.json``) contributes its ``test/`` runs (the
chosen learning rate, every seed) and ``single/`` runs; its ``select/`` runs are scored on the dev
split at other learning rates and are left out.

Files read per run, through ``badit.experiments.folder.RunFolder`` (formats: badit/experiments/folder.py,
badit/training/callbacks.py, badit/analysis/report.py):

- ``metrics.json``: per-task scores, averages, ``run`` information, ``continual`` (matrix, AP...);
- ``logs/train_log.jsonl`` (multitask), ``tasks/<task>/logs/`` (single), ``stages/<NN>-<task>/logs/``
  (continual): Trainer log records, ``regroup.jsonl`` (one line per regroup) and
  ``router_health.jsonl`` (routing statistics at every logging step);
- ``analysis/analysis.json``: gradient conflict, expert usage and neuron overlap (``badit analyze``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from badit.errors import BaditError
from badit.experiments.folder import CONFIG_FILE, SWEEP_FILE, RunError, RunFolder, StageFolder
from badit.experiments.results import RunResult, label_runs
from badit.experiments.results import load_run as load_result

SWEEP_DEPTH = 2  # a folder of runs holds runs (depth 1) or groups of runs (depth 2)
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
class Run(RunResult):
    """A run's scores (the results model's `RunResult`) with its training logs and `badit analyze` results."""

    segments: list[LogSegment] = field(default_factory=list)
    analysis: dict | None = None

    @property
    def analysis_file(self) -> Path:
        return self.folder.analysis_file


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


def _segment(stage: StageFolder, name: str) -> LogSegment:
    return LogSegment(
        name=name,
        folder=stage.path,
        train=stage.logs_of("train"),
        regroup=stage.logs_of("regroup"),
        router=stage.logs_of("router"),
    )


def _segments(run: RunFolder, setting: str) -> list[LogSegment]:
    if setting == "multitask":
        return [_segment(run, "")]
    segments, offset = [], 0
    for stage in run.stages(setting):
        segment = _segment(stage, stage.name)
        if setting == "continual":  # stages are drawn one after another
            segment.offset = offset
            offset += max((r.get("step", 0) for r in segment.train), default=0)
        segments.append(segment)
    return segments


def load_run(path: str | Path) -> Run:
    """One run folder as a `Run`; ReportError when it is not a run or has no metrics yet."""
    path = Path(path)
    folder = RunFolder(path)
    if not folder.has_config():
        raise ReportError(
            f"{path}: not a run folder (no {CONFIG_FILE}); give folders written by `badit train`"
        )
    try:
        scores = load_result(path)
        return Run(**vars(scores), segments=_segments(folder, scores.setting), analysis=folder.analysis())
    except RunError as error:
        raise ReportError(f"{error}; or leave this run out") from None


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
