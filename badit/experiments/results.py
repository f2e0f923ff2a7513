"""The results model: the scores of run folders, aggregated once, and the one table type that shows them.

``badit compare``, ``badit sweep`` and ``badit report`` read runs with `load_runs`, gather the seeds of one
configuration into a `Group`, and take every number from the functions here:

- per task and the average over tasks, mean ± sample std over a group's seeds (`Group.score`);
- the single-task reference of a multi-task group and the interference score (`single_reference`,
  `interference`);
- paired comparisons of two groups on the same test examples (`paired_difference`: the one call site of
  the comparison statistic, a seed-paired interval over seeds and examples); every group of a setting
  against that setting's reference group (`reference_differences`, rendered by `difference_rows`);

and render them through `Table` (terminal, Markdown, HTML). Per-example scores are keyed by
(run, setting, method, seed, task, example id) (`example_scores`); they come from each run's
predictions.jsonl, the per-task scores from its metrics.json (both read by ``badit.experiments.folder``).

Text from run folders (names, tasks) is untrusted: `Table` strips control characters (ANSI escapes,
carriage returns...) from terminal and Markdown output and escapes HTML.
"""

from __future__ import annotations

import html
import re
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from badit.errors import BaditError
from badit.experiments.folder import RunError, RunFolder, base_method, is_number
from badit.names import METRICS

AVERAGE = "average"  # the row of the mean over tasks


class ResultsError(BaditError, ValueError):
    """Runs that cannot be compared as asked (e.g. scored on different test examples)."""


# ----------------------------------------------------------------------------------------------
# Numbers as text, and text that is safe to print


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # C0 (incl. ESC, CR, newline), DEL, C1


def plain(text) -> str:
    """``text`` without control characters (each becomes a space): terminal escapes from a run name or a
    task name cannot colour, clear or retitle the terminal, nor break a Markdown table row."""
    return _CONTROL.sub(" ", str(text))


def number(value: float | None, spec: str = ".2f", missing: str = "-") -> str:
    """``value`` formatted with ``spec``; None or NaN (e.g. a metric without enough stages) as ``missing``."""
    if value is None or value != value:
        return missing
    return format(value, spec)


def with_spread(mean: float | None, std: float | None = None) -> str:
    """``45.00 ± 7.07`` (2 decimals; ``± std`` only when there is a spread over seeds), ``-`` when missing."""
    if mean is None or mean != mean:
        return "-"
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


@dataclass(frozen=True)
class Spread:
    """A value over seeds: mean, sample standard deviation (None with one seed) and the values."""

    mean: float
    std: float | None
    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        values = tuple(float(v) for v in values)
        return cls(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None, values)

    def text(self) -> str:
        return with_spread(self.mean, self.std)

    def as_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std, "values": list(self.values)}


# ----------------------------------------------------------------------------------------------
# Runs


@dataclass
class RunResult:
    """One run folder's scores (metrics.json) and what the tables show about it."""

    path: Path
    name: str
    method: str
    setting: str
    model: str
    seed: int | None
    learning_rate: float | None
    effective_scale: float | None
    split: str
    tasks: dict[str, dict[str, float]]
    """task -> metric -> score (and ``num_examples`` where metrics.json has it)."""
    average: dict[str, float]
    continual: dict | None
    info: dict
    """metrics.json's ``run`` record (timings, memory, steps...)."""
    options: dict = field(default_factory=dict)
    """config.yaml's ``method`` section without its name (empty for a folder without config.yaml): two runs
    of one method with other options (e.g. the published-code variant of badit) are other configurations."""
    label: str = ""
    _predictions: list[dict] | None = field(default=None, repr=False, compare=False)

    @property
    def folder(self) -> RunFolder:
        return RunFolder(self.path)

    @property
    def metrics_file(self) -> Path:
        return self.folder.metrics_file

    def predictions(self) -> list[dict]:
        """predictions.jsonl, read once (every paired comparison of the run, per metric, reuses it)."""
        if self._predictions is None:
            self._predictions = self.folder.predictions()
        return self._predictions


def load_run(path: str | Path) -> RunResult:
    """A run folder's metrics.json (checked by `RunFolder.metrics`) as a `RunResult`; the learning rate and
    evaluation split from its config.yaml where it has one (a folder may hold only metrics.json)."""
    folder = RunFolder(path)
    metrics = folder.metrics()
    info = metrics.get("run") if isinstance(metrics.get("run"), dict) else {}
    config = folder.saved_config() if folder.has_config() else {}
    learning_rate = (config.get("training") or {}).get("learning_rate", info.get("learning_rate"))
    return RunResult(
        path=Path(path),
        name=str(info.get("name", Path(path).name)),
        method=str(info.get("method", "?")),
        setting=str(info.get("setting", "multitask")),
        model=str(info.get("model", "?")),
        seed=info.get("seed") if is_number(info.get("seed")) else None,
        learning_rate=learning_rate if is_number(learning_rate) else None,
        effective_scale=info.get("effective_scale") if is_number(info.get("effective_scale")) else None,
        split=str((config.get("evaluation") or {}).get("split", "test")),
        tasks={t: {k: v for k, v in s.items() if is_number(v)} for t, s in metrics["tasks"].items()},
        average={k: v for k, v in metrics["average"].items() if is_number(v)},
        continual=metrics.get("continual"),
        info=info,
        options={k: v for k, v in (config.get("method") or {}).items() if k != "name"},
    )


def _comparable_options(runs: Sequence[RunResult]) -> list[dict]:
    """Each run's method options restricted to the names every run of its method records: a folder written
    by an older badit lacks the options added since, and a missing name must not split it from the newer
    runs of the same configuration."""
    names: dict[str, set[str]] = {}
    for run in runs:
        names[run.method] = names.get(run.method, set(run.options)) & set(run.options)
    return [{k: v for k, v in run.options.items() if k in names[run.method]} for run in runs]


def _option_details(options: list[dict]) -> list[str]:
    """For groups whose labels are still equal: each one's values of the method options on which they differ,
    e.g. ``router_init random, train_router False`` beside ``router_init zero, train_router True``."""
    names = sorted({name for o in options for name in o})
    differing = [n for n in names if len({repr(o.get(n)) for o in options}) > 1]
    return [", ".join(f"{n} {o.get(n, '-')}" for n in differing) for o in options]


def label_runs(runs: list[RunResult]) -> None:
    """Labels ``method (setting)``, with the differing method options (`_option_details`), ``seed N`` and
    then the folder name added where two would be equal."""
    base = [f"{r.method} ({r.setting})" for r in runs]
    options = _comparable_options(runs)
    for label in set(base):
        same = [i for i, b in enumerate(base) if b == label]
        for i, extra in zip(same, _option_details([options[i] for i in same])):
            base[i] = f"{label} {extra}" if extra else label
    labels = [
        f"{label} seed {run.seed}" if base.count(label) > 1 and run.seed is not None else label
        for run, label in zip(runs, base)
    ]
    for run, label in zip(runs, labels):
        run.label = label if labels.count(label) == 1 else f"{label} {run.path.name}"


def load_runs(paths: Sequence[str | Path]) -> list[RunResult]:
    """The runs of ``paths``, labelled (`label_runs`)."""
    if not paths:
        raise RunError("give at least one run folder")
    runs = [load_run(p) for p in paths]
    label_runs(runs)
    return runs


def example_scores(runs: Sequence[RunResult], metric: str = "rougeL") -> dict[tuple, float]:
    """(run, setting, method, seed, task, example id) -> the example's score, from the runs' predictions."""
    return {
        (str(r.path), r.setting, r.method, r.seed, p["task"], str(p["id"])): float(p[metric])
        for r in runs
        for p in r.predictions()
    }


# ----------------------------------------------------------------------------------------------
# Groups of seeds


SCORE_RANGE = (0.0, 100.0)
"""ROUGE-L and EM, in percent: where a score and its interval lie."""


@dataclass(frozen=True)
class Interval:
    """A score with its 95% interval and the counts it rests on: test examples and seeds."""

    mean: float
    low: float
    high: float
    examples: int
    seeds: int

    def text(self) -> str:
        return f"[{self.low:.2f}, {self.high:.2f}]"


@dataclass
class Group:
    """The runs (seeds) of one configuration; a group of one run is the run itself."""

    label: str
    method: str
    setting: str
    model: str
    split: str
    runs: list[RunResult]
    options: dict = field(default_factory=dict)
    """The method options of its runs (`RunResult.options`)."""
    _aligned: dict = field(default_factory=dict, repr=False, compare=False)  # metric -> aligned_scores

    @property
    def files(self) -> list[Path]:
        return [r.metrics_file for r in self.runs]

    @property
    def counted(self) -> str:
        """What the group's spread is over, for a column header: ``3 seeds``, ``1 seed``; ``2 runs, 1 seed``
        where runs repeat a seed (folders of one configuration and seed trained twice: their spread is not
        seed variance, and they do not pair by seed)."""
        seeds = len({r.seed for r in self.runs})
        text = f"{seeds} seed{'s' if seeds != 1 else ''}"
        return text if seeds == len(self.runs) else f"{len(self.runs)} runs, {text}"

    @property
    def tasks(self) -> list[str]:
        """The tasks every run of the group has."""
        return sorted(set.intersection(*(set(r.tasks) for r in self.runs)))

    def score(self, task: str, metric: str, tasks: Sequence[str] | None = None) -> Spread:
        """``task``'s score over the seeds; ``AVERAGE``: each seed's mean over ``tasks`` (default: the
        group's), then over the seeds."""
        if task == AVERAGE:
            tasks = list(tasks or self.tasks)
            return Spread.of([statistics.fmean(r.tasks[t][metric] for t in tasks) for r in self.runs])
        return Spread.of([r.tasks[task][metric] for r in self.runs])

    def interval(self, task: str, metric: str, tasks: Sequence[str] | None = None) -> Interval | None:
        """``task``'s score (``AVERAGE``: the mean over ``tasks``, default the group's) with its 95% interval
        over seeds *and* test examples (`badit.evaluation.statistics.interval_arrays`: the seed-aware
        statistic), from the runs' predictions.jsonl. None when a run has no readable predictions, the seeds
        were scored on different examples, or a task has fewer than 2 examples (no variance to estimate)."""
        import numpy as np

        from badit.evaluation.statistics import aligned_scores, input_clusters, interval_arrays

        chosen = sorted(tasks or self.tasks) if task == AVERAGE else [task]
        if metric not in self._aligned:  # read once per metric (None: not available)
            try:
                records = [r.predictions() for r in self.runs]
                keys, scores = aligned_scores(records, metric)
                self._aligned[metric] = keys, scores, input_clusters(records[0], keys)
            except (RunError, ValueError, KeyError, OSError):
                self._aligned[metric] = None
        if self._aligned[metric] is None:
            return None
        keys, scores, clusters = self._aligned[metric]
        kept = [i for i, (name, _) in enumerate(keys) if name in chosen]
        index = np.array([chosen.index(keys[i][0]) for i in kept])
        if not kept or set(index.tolist()) != set(range(len(chosen))):
            return None
        try:
            out = interval_arrays(
                scores[:, kept], index, clusters=None if clusters is None else clusters[kept]
            )
        except ValueError:  # a task with fewer than 2 examples
            return None
        # a score lies in [0, 100]: the t interval is cut to that range, which keeps every true mean it
        # covered (so its coverage) and never shows an impossible bound ("70.00 [35.44, 104.56]")
        low, high = max(SCORE_RANGE[0], float(out["low"])), min(SCORE_RANGE[1], float(out["high"]))
        return Interval(float(out["mean"]), low, high, len(kept), len(self.runs))


def run_groups(runs: Sequence[RunResult]) -> list[Group]:
    """One group per run (``badit compare``: a column per run), labelled as the runs."""
    return [Group(r.label, r.method, r.setting, r.model, r.split, [r], dict(r.options)) for r in runs]


DETAILS: tuple[Callable[[tuple], str], ...] = (
    lambda key: Path(key[2]).name,  # model
    lambda key: f"lr {key[3]:g}" if is_number(key[3]) else "lr ?",
    lambda key: f"{key[4]} split",
)


def _group_labels(keys: list[tuple], options: dict[tuple, dict]) -> dict[tuple, str]:
    """``method (setting)``, then the model, learning rate and split added where they tell groups apart, then
    the method options on which the groups still equal differ (`_option_details`)."""
    labels = {key: f"{key[0]} ({key[1]})" for key in keys}
    for detail in DETAILS:
        values: dict[str, set[str]] = {}
        for key, label in labels.items():
            values.setdefault(label, set()).add(detail(key))
        labels = {
            key: f"{label} {detail(key)}" if len(values[label]) > 1 else label
            for key, label in labels.items()
        }
    for label in {v for v in labels.values() if list(labels.values()).count(v) > 1}:
        equal = [key for key, v in labels.items() if v == label]
        for key, extra in zip(equal, _option_details([options[k] for k in equal])):
            labels[key] = f"{label} {extra}"
    return labels


def seed_groups(runs: Sequence[RunResult]) -> list[Group]:
    """One group per (method, setting, model, learning rate, split, method options), in the order runs were
    given; labels ``method (setting)`` get the model, then the learning rate and split, then the differing
    method options, where two would be equal."""
    groups: dict[tuple, Group] = {}
    for run, options in zip(runs, _comparable_options(runs)):
        key = (
            run.method,
            run.setting,
            run.model,
            run.learning_rate,
            run.split,
            repr(sorted(options.items())),
        )
        if key not in groups:
            groups[key] = Group("", run.method, run.setting, run.model, run.split, [], options)
        groups[key].runs.append(run)
    for key, label in _group_labels(list(groups), {k: g.options for k, g in groups.items()}).items():
        groups[key].label = label
    return list(groups.values())


# ----------------------------------------------------------------------------------------------
# Interference


def single_reference(
    group: Group, groups: Sequence[Group], tasks: Sequence[str] | None = None
) -> Group | None:
    """The single-task group (one adapter per task) to measure ``group`` against: same model and
    evaluation split, scored on ``tasks`` (default: the group's), the same method preferred, then the same
    method options (a variant against its own single runs), then the same seeds (so that `badit compare`'s
    seed-2 column is measured against the seed-2 single run)."""
    needed = set(tasks or group.tasks)
    candidates = [
        g
        for g in groups
        if g.setting == "single"
        and g.model == group.model
        and g.split == group.split
        and needed <= set(g.tasks)
    ]
    seeds = {r.seed for r in group.runs}
    candidates.sort(  # stable: among equals, the order the runs were given
        key=lambda g: (
            base_method(g.method) != base_method(group.method),
            g.options != group.options,
            {r.seed for r in g.runs} != seeds,
        )
    )
    return candidates[0] if candidates else None


@dataclass
class Interference:
    """A multi-task group against its single-task reference: per-task differences of the seed means and
    their mean over tasks, the interference score (negative = training the tasks together costs)."""

    group: Group
    reference: Group
    tasks: list[str]
    per_task: dict[str, dict[str, float]]  # task -> metric -> multi - single
    average: dict[str, float]  # metric -> interference score
    _paired: dict = field(default_factory=dict, repr=False, compare=False)  # metric -> paired(metric)

    def paired(self, metric: str = "rougeL") -> dict | None:
        """The interference score as a `paired_difference` (multi-task minus single-task, paired by seed and
        example, on the tasks of the score): its 95% interval, counts and smallest resolvable difference.
        None where it cannot be formed (seeds that do not pair, a run without predictions.jsonl, different
        test examples, a task with fewer than 2 examples)."""
        return _cached_paired(self._paired, self.group, self.reference, metric, self.tasks)


def interference(group: Group, reference: Group, tasks: Sequence[str] | None = None) -> Interference:
    """``group`` minus ``reference`` per task (seed means) and on average over ``tasks`` (default: the
    group's): ``badit.evaluation.interference_score``."""
    from badit.evaluation import interference_score

    tasks = list(tasks or group.tasks)
    multi = {m: {t: group.score(t, m).mean for t in tasks} for m in METRICS}
    single = {m: {t: reference.score(t, m).mean for t in tasks} for m in METRICS}
    per_task = {t: {m: multi[m][t] - single[m][t] for m in METRICS} for t in tasks}
    average = {m: interference_score(multi[m], single[m]) for m in METRICS}
    return Interference(group, reference, tasks, per_task, average)


def interferences(groups: Sequence[Group], tasks: Sequence[str] | None = None) -> list[Interference]:
    """The interference of every multi-task group that has a single-task reference among ``groups``."""
    out = []
    for group in groups:
        if group.setting == "multitask":
            reference = single_reference(group, groups, tasks)
            if reference is not None:
                out.append(interference(group, reference, tasks))
    return out


# ----------------------------------------------------------------------------------------------
# Paired comparisons


def paired_difference(
    group: Group, reference: Group, metric: str = "rougeL", tasks: Sequence[str] | None = None
) -> dict:
    """``group`` minus ``reference`` on the same test examples, mean over tasks (``tasks``: only these;
    default every task of the predictions), with its 95% interval: the one place the comparison statistic
    is chosen. It is `badit.evaluation.statistics.paired_interval`: seed s of one group paired with seed s
    of the other (runs matched by seed, on the seeds both groups have: a group of 3 seeds against one of 5
    pairs on the 3 shared ones), a t interval whose variance counts the test examples and those seeds, the
    counts (``examples``, ``seeds``) it rests on beside it,
    and ``resolvable``: the smallest difference it tells from 0 at 80% power (None without a standard
    error; `badit.evaluation.statistics.resolvable_difference`)."""
    from badit.evaluation.statistics import paired_interval

    mine, theirs = {r.seed: r for r in group.runs}, {r.seed: r for r in reference.runs}
    seeds = sorted(set(mine) & set(theirs), key=str)
    if not seeds or len(mine) != len(group.runs) or len(theirs) != len(reference.runs):
        raise ResultsError(
            f"pairing by seed needs one run per seed and a seed both sides have: {group.label} has seeds "
            f"{sorted(mine, key=str)}, {reference.label} {sorted(theirs, key=str)}"
        )
    wanted = None if tasks is None else set(tasks)

    def records(run: RunResult) -> list[dict]:
        return [p for p in run.predictions() if wanted is None or p["task"] in wanted]

    try:
        return paired_interval([records(mine[s]) for s in seeds], [records(theirs[s]) for s in seeds], metric)
    except ValueError as error:
        raise ResultsError(f"{group.label} vs {reference.label}: {error}") from None


def _cached_paired(
    cache: dict, group: Group, reference: Group, metric: str, tasks: Sequence[str] | None
) -> dict | None:
    """``cache[metric]``, filled with `paired_difference` once; None where the pair cannot be formed (seeds
    that do not pair, a run without predictions.jsonl, different test examples, a task with < 2 examples)."""
    if metric not in cache:
        try:
            cache[metric] = paired_difference(group, reference, metric, tasks)
        except (ResultsError, RunError, KeyError, OSError):
            cache[metric] = None
    return cache[metric]


REFERENCE_METHOD = "badit"  # the method the others are measured against, as in ``badit sweep``
COMPARED_SETTINGS = ("multitask", "single")  # settings whose groups are compared with each other


def reference_group(groups: Sequence[Group]) -> Group:
    """The group the others are measured against: the one `REFERENCE_METHOD` group if there is exactly
    one, else the first (``badit sweep``'s rule for its methods)."""
    badit = [g for g in groups if g.method == REFERENCE_METHOD]
    return badit[0] if len(badit) == 1 else groups[0]


@dataclass
class Difference:
    """``group`` minus ``reference`` (two groups of one setting) on ``tasks``, paired by seed and example
    (`paired_difference`), per metric on demand (`paired`)."""

    group: Group
    reference: Group
    tasks: list[str]
    _paired: dict = field(default_factory=dict, repr=False, compare=False)  # metric -> paired(metric)

    @property
    def shared_seeds(self) -> list:
        """The seeds both groups have (the pairing uses these)."""
        return sorted({r.seed for r in self.group.runs} & {r.seed for r in self.reference.runs}, key=str)

    def paired(self, metric: str = "rougeL") -> dict | None:
        """`paired_difference` of the two groups: mean over ``tasks`` of group minus reference, its 95%
        interval, counts and smallest resolvable difference; None where it cannot be formed (seeds that do
        not pair, a run without predictions.jsonl, different test examples, a task with < 2 examples)."""
        return _cached_paired(self._paired, self.group, self.reference, metric, self.tasks)


def reference_differences(groups: Sequence[Group], tasks: Sequence[str] | None = None) -> list[Difference]:
    """For each setting of `COMPARED_SETTINGS` with two groups or more of which one shares a seed with the
    setting's `reference_group`: every group but the reference against it, on ``tasks`` (default: the
    tasks both groups have), in the order of ``groups``. A setting where no group shares a seed with the
    reference gives nothing (nothing pairs); continual groups are left out (their scores are a matrix)."""
    out = []
    for setting in COMPARED_SETTINGS:
        same = [g for g in groups if g.setting == setting]
        if len(same) < 2:
            continue
        reference = reference_group(same)
        found = [
            Difference(g, reference, list(tasks or sorted(set(g.tasks) & set(reference.tasks))))
            for g in same
            if g is not reference
        ]
        if any(d.shared_seeds for d in found):
            out += found
    return out


def difference_rows(
    groups: Sequence[Group], differences: Sequence[Difference], metric: str
) -> list[list[str]]:
    """Two table rows per reference, one cell per group of ``groups``: ``column − REF, 95% CI`` (the
    difference with its interval and counts, `describe`) and its smallest resolvable difference (at
    `POWER`), as sweep.md's "REF difference" rows (method minus reference). ``(reference)`` under the
    reference, ``-`` where the pair cannot be formed, empty under groups measured against another one."""
    from badit.evaluation.statistics import POWER, describe, describe_resolvable  # numpy, scipy: lazily

    rows = []
    for reference in list({id(d.reference): d.reference for d in differences}.values()):
        found = {id(d.group): d.paired(metric) for d in differences if d.reference is reference}
        intervals, resolvable = [], []
        for group in groups:
            if group is reference:
                intervals.append("(reference)")
                resolvable.append("(reference)")
            elif id(group) not in found:
                intervals.append("")
                resolvable.append("")
            else:
                paired = found[id(group)]
                intervals.append(describe(paired) if paired else "-")
                resolvable.append(describe_resolvable(paired))
        rows.append([f"column − {reference.label}, 95% CI", *intervals])
        rows.append([f"column − {reference.label} resolvable ({POWER:.0%} power)", *resolvable])
    return rows


def difference_note(differences: Sequence[Difference]) -> str:
    """What the ``column − REF`` rows hold, said once under a table that shows them."""
    from badit.evaluation.statistics import METHOD, RESOLVABLE

    references = ", ".join(dict.fromkeys(d.reference.label for d in differences))
    return (
        f"column − {references}: the column's group minus the reference group of its setting ({REFERENCE_METHOD} "
        "where there is exactly one such group, else the first), mean over the tasks both have, on the same "
        f"test examples, seed s paired with seed s (on the seeds both groups have, counted in n); 95% interval: {METHOD}. "
        f"Difference {RESOLVABLE}"
    )


# ----------------------------------------------------------------------------------------------
# The table type


@dataclass
class Table:
    """Rows of text cells under a header; rendered for the terminal / Markdown or as HTML.

    The first column is left-aligned, the others right-aligned (numbers). ``strong``: indices of rows shown
    in bold (the average). ``notes``: lines printed under the table."""

    header: list[str]
    rows: list[list[str]]
    strong: set[int] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)
    title: str | None = None

    def _cells(self) -> list[list[str]]:
        rows = [[_markdown_cell(c) for c in row] for row in self.rows]
        return [[f"**{c}**" if i in self.strong and c else c for c in row] for i, row in enumerate(rows)]

    def markdown(self, aligned: bool = False) -> str:
        """GitHub Markdown; ``aligned``: columns padded to one width (for reading in a terminal). Control
        characters are removed; ``|``, ``\\``, ``<`` and ``>`` in cells are backslash-escaped."""
        header, rows = [_markdown_cell(h) for h in self.header], self._cells()
        if aligned:
            widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

            def line(cells):
                padded = (c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
                return "| " + " | ".join(padded) + " |"

            separator = "|" + "|".join(
                "-" * (w + 2) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths)
            )
            separator += "|"
        else:

            def line(cells):
                return "| " + " | ".join(cells) + " |"

            separator = "|---|" + "---:|" * (len(header) - 1)
        out = ([f"# {_markdown_text(self.title)}", ""] if self.title else []) + [line(header), separator]
        out += [line(row) for row in rows]
        if self.notes:
            out += ["", *(_markdown_text(n) for n in self.notes)]
        return "\n".join(out) + "\n"

    def terminal(self) -> str:
        """What the CLI prints: the aligned Markdown (readable as text, pasteable as Markdown)."""
        return self.markdown(aligned=True)

    def html(self, caption: str | None = None) -> str:
        """An HTML table; every cell escaped."""
        head = "".join(f"<th>{_html(h)}</th>" for h in self.header)
        body = "".join(
            "<tr>"
            + "".join(
                f"<td><strong>{_html(c)}</strong></td>" if i in self.strong else f"<td>{_html(c)}</td>"
                for c in row
            )
            + "</tr>"
            for i, row in enumerate(self.rows)
        )
        cap = f"<caption>{_html(caption)}</caption>" if caption else ""
        return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _markdown_text(value) -> str:
    """Text for Markdown: no control characters, ``<`` and ``>`` backslash-escaped (shown as themselves,
    never read as HTML: a task named ``<script>`` stays text)."""
    return plain(value).replace("<", "\\<").replace(">", "\\>")


def _markdown_cell(value) -> str:
    return _markdown_text(str(value).replace("\\", "\\\\")).replace("|", "\\|")


def _html(value) -> str:
    return html.escape(str(value), quote=True)


def summary_table(metrics: dict, title: str) -> str:
    """summary.md and what ``badit train`` / ``badit eval`` print: ROUGE-L and exact match per task, with
    the average over tasks (and the continual metrics of a continual run)."""
    rows = [
        [name, number(s["rougeL"]), number(s["exact_match"]), str(s.get("num_examples", ""))]
        for name, s in metrics["tasks"].items()
    ]
    average = metrics["average"]
    rows.append([AVERAGE, number(average["rougeL"]), number(average["exact_match"]), ""])
    continual = metrics.get("continual")
    notes = []
    if continual:
        scores = ", ".join(f"{k} {number(v, missing='n/a')}" for k, v in continual["rougeL"].items())
        notes.append(f"Continual (ROUGE-L): {scores}")
    return Table(
        ["task", "ROUGE-L", "EM", "n"], rows, strong={len(rows) - 1}, notes=notes, title=title
    ).markdown()
