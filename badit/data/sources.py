"""Where a run's tasks come from: `data.path` recognised by its form, `data.format` to force it.

| data.path                                   | format     | read by                           |
|---------------------------------------------|------------|-----------------------------------|
| `mix.jsonl`                                  | `jsonl`    | `badit.data.rows`                 |
| `mix.csv`                                    | `csv`      | `badit.data.rows`                 |
| `data.json` / `.parquet` file                | `datasets` | `datasets.load_dataset`           |
| folder written by `save_to_disk`             | `datasets` | `datasets.load_from_disk`         |
| other folder                                 | `superni`  | `badit.data.tasks` (both layouts) |
| `owner/name` that is no local path           | `datasets` | `datasets.load_dataset` (the hub) |
| `generated:interference`                    | `generated`| `badit.data.synthetic` (in memory) |

Every source gives the same `Task` objects, so training, evaluation and analysis never look at the
format. Tasks without a given split have their test (and dev) examples split off per task with a seed
(`badit.data.tasks.split_indices`): SuperNI raw files 1000 train / 100 test, own data 10% test.

Dev is never test (`CarvedDevSource`): where a task's dev split is missing or shares examples with its
test split (same id, or same input and answers; the SuperNI continual benchmark ships dev.json
byte-identical to test.json), its dev examples are carved from its train split with a fixed seed that
does not depend on the run seed (`DEV_SPLIT_SEED`), and training uses the rest; `data.dev_size` sets
how many (default 10%, at most `DEV_CAP` per task).

`check_data` (`badit data check PATH`): per-task counts and every problem found, without tracebacks,
for every source.
"""

from __future__ import annotations

import dataclasses
import random
import sys
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, TextIO

from badit.data.files import DataError
from badit.data.rows import (
    MAX_PROBLEMS,
    Columns,
    Example,
    Table,
    dataset_tables,
    is_saved_dataset,
    load_hf,
    parse_tables,
    problems_error,
    read_csv,
    read_jsonl,
    table_columns,
    table_notes,
)
from badit.data.synthetic import GENERATED_PREFIX, GeneratedSource, generated_sizes
from badit.data.tasks import (
    OWN_DATA_SIZES,
    SPLITS,
    VERBATIM,
    Split,
    SplitSizes,
    Task,
    check_task_name,
    detect_layout,
    list_tasks,
    load_tasks,
    split_indices,
)
from badit.names import DATA_FORMATS

FORMATS = DATA_FORMATS


def detect_format(path: str | Path, format: str = "auto") -> str:
    """The format of `path` (one of FORMATS but auto): `format` itself unless it is `auto`."""
    if format not in FORMATS:
        raise DataError(f"data.format {format!r} is unknown; use one of {', '.join(FORMATS)}")
    if format != "auto":
        return format
    where = Path(path).expanduser()
    suffix = where.suffix.lower()
    if where.is_file():
        if suffix in (".jsonl", ".csv"):
            return suffix[1:]
        if suffix in (".json", ".parquet"):
            return "datasets"
        raise DataError(
            f"{path}: cannot tell the format from the extension {suffix or '(none)'}; name the file "
            ".jsonl or .csv, or set data.format (jsonl, csv, datasets)"
        )
    if where.is_dir():
        return "datasets" if is_saved_dataset(where) else "superni"
    looks_like_hub = str(path).count("/") == 1 and not str(path).startswith((".", "/", "~")) and not suffix
    if looks_like_hub:
        return "datasets"
    what = (
        "not a regular file or folder (a device, a pipe...)" if where.exists() else "no such file or folder"
    )
    raise DataError(
        f"{path}: {what}; check data.path (a .jsonl/.csv file, a saved dataset folder, "
        "a SuperNI folder or a hub name owner/name)"
    )


class TaskSource(Protocol):
    """Tasks of one data source, one split at a time."""

    path: str
    format: str

    def task_names(self) -> list[str]:
        """The names of every task in the source, sorted."""

    def load(self, split: Split, names: list[str] | None = None) -> list[Task]:
        """The tasks (all, or `names`), sorted by name, each holding the instances of `split`."""

    def notes(self) -> list[str]:
        """Remarks for `badit data check` (how the data was read and split)."""


@dataclasses.dataclass
class SuperNISource:
    """A SuperNI folder (folder per task, or raw task files split with `sizes`); read lazily per task."""

    path: str
    sizes: SplitSizes
    format: str = "superni"

    def task_names(self) -> list[str]:
        return list_tasks(self.path)

    def load(self, split: Split, names: list[str] | None = None) -> list[Task]:
        return load_tasks(self.path, split, names, self.sizes)

    def notes(self) -> list[str]:
        return []


class TableSource:
    """Own data (JSONL, CSV, datasets): every row read and validated at once, grouped by task."""

    def __init__(
        self,
        tables: list[Table],
        path: str,
        format: str,
        columns: Columns,
        sizes: SplitSizes,
        default_task: str | None,
        strict: bool = True,
    ):
        self.path, self.format, self.columns, self.sizes = path, format, columns, sizes
        examples, self.problems = parse_tables(tables, columns, default_task)
        if strict and self.problems:
            raise problems_error(self.problems, f"`badit data check {path}`")
        self.by_task: dict[str, list[Example]] = defaultdict(list)
        for example in examples:
            self.by_task[example.task].append(example)
        self._notes = [note for table in tables for note in table_notes(table, columns)]
        if examples and not any(columns.task in table_columns(t) for t in tables):
            self._notes.append(f"no {columns.task!r} column: every row belongs to task {default_task!r}")
        if examples and all(e.split is None for e in examples):
            self._notes.append(
                f"no {columns.split!r} column: test examples are split off per task with seed {sizes.seed} "
                f"(test {_size(sizes.test)}, dev {_size(sizes.dev)})"
            )

    def task_names(self) -> list[str]:
        return sorted(self.by_task)

    def notes(self) -> list[str]:
        return list(self._notes)

    def load(self, split: Split, names: list[str] | None = None) -> list[Task]:
        names = self.task_names() if names is None else sorted(names)
        if not names:
            raise DataError(f"{self.path}: no valid rows, hence no tasks")
        return [self._task(name, split) for name in names]

    def _task(self, name: str, split: Split) -> Task:
        examples = self.by_task.get(name)
        if not examples:
            known = ", ".join(self.task_names()[:10])
            raise DataError(
                f"{self.path}: no rows for task {name!r}; check data.tasks (tasks found: {known})"
            )
        if all(e.split is None for e in examples):
            if split == "dev" and self.sizes.count("dev", len(examples)) == 0:
                raise DataError(
                    f"{self.path}: task {name!r} has no dev examples; set data.split_sizes.dev (e.g. 0.1) "
                    "or add a split column"
                )
            keep = split_indices(len(examples), name, self.sizes, f"{self.path}: task {name!r}")[split]
            instances = [examples[i].instance for i in keep]
        else:
            instances = [e.instance for e in examples if e.split == split]
            if not instances:
                raise DataError(
                    f"{self.path}: task {name!r} has no {split} examples; add {split} rows for it "
                    f"(column {self.columns.split!r}, or the dataset's {split} split), or drop the split "
                    "so that test examples are split off with the seed"
                )
        return Task(
            name=name,
            definition="",
            positive_examples=[],
            instances=instances,
            source=self.path,
            template=VERBATIM,
        )


DEV_FRACTION = 0.1
"""Default dev share of a task's train examples when dev is carved from train (`data.dev_size`)."""
DEV_CAP = 100
"""A fractional dev size keeps at most this many examples per task: 100 dev examples resolve a 5-point
difference of ROUGE-L well enough to choose a learning rate, and more only costs evaluation time."""
DEV_SPLIT_SEED = 0
"""Seed of the dev examples carved from train: fixed, so that every run seed, method and learning
rate of a sweep selects on the same dev examples and trains on the same rest."""


def _key(instance) -> tuple[str, tuple[str, ...]]:
    return instance.input, tuple(instance.outputs)


def shared_examples(first: Task, second: Task) -> int:
    """How many instances of ``first`` also occur in ``second`` (same id, or same input and answers)."""
    ids = {inst.id for inst in second.instances}
    contents = {_key(inst) for inst in second.instances}
    return sum(inst.id in ids or _key(inst) in contents for inst in first.instances)


def dev_count(size: int | float, n: int) -> int:
    """Dev examples carved from a task's ``n`` train examples: a fraction in (0, 1) of them (rounded, at
    least 1, at most `DEV_CAP`) or a count."""
    if isinstance(size, float) and 0 < size < 1:
        return min(DEV_CAP, max(1, round(size * n)))
    return int(size)


class CarvedDevSource:
    """``source`` whose dev split never shares an example with its test split.

    Per task, decided once: if the source's dev split is missing (no dev file, own data without dev
    rows) or shares an example with test (`shared_examples`), dev is `dev_count(dev_size, n)` train
    examples drawn with `DEV_SPLIT_SEED` (seeded by task name too: other tasks never change a task's
    split) and train is the rest, in file order. Otherwise the source's splits are kept. ``carved``
    maps each carved task to why (``"missing"`` or ``"shares N of M with test"``).
    """

    def __init__(self, source: TaskSource, dev_size: int | float = DEV_FRACTION):
        if isinstance(dev_size, bool) or not isinstance(dev_size, (int, float)) or dev_size <= 0:
            raise DataError(f"data.dev_size must be a fraction in (0, 1) or a count >= 1, got {dev_size!r}")
        if isinstance(dev_size, float) and dev_size >= 1 and not dev_size.is_integer():
            raise DataError(
                f"data.dev_size={dev_size}: give a count (e.g. 50) or a fraction below 1 (e.g. 0.1)"
            )
        self.source, self.dev_size = source, dev_size
        self.path, self.format = source.path, source.format
        self.carved: dict[str, str] = {}
        self._splits: dict[str, dict[str, Task]] = {}

    def task_names(self) -> list[str]:
        return self.source.task_names()

    def notes(self) -> list[str]:
        return self.source.notes()

    def load(self, split: Split, names: list[str] | None = None) -> list[Task]:
        names = self.task_names() if names is None else sorted(names)
        return [self._task(name, split) for name in names]

    def _task(self, name: str, split: Split) -> Task:
        if split == "test":
            return self._load(name, "test")
        if name not in self._splits:
            self._splits[name] = self._decide(name)
        return self._splits[name][split]

    def _load(self, name: str, split: Split) -> Task:
        (task,) = self.source.load(split, [name])
        return task

    def _decide(self, name: str) -> dict[str, Task]:
        train, test = self._load(name, "train"), self._load(name, "test")
        try:
            dev = self._load(name, "dev")
        except DataError:
            dev, reason = None, "missing"
        if dev is not None:
            shared = shared_examples(dev, test)
            if not shared:
                return {"train": train, "dev": dev}
            reason = f"shares {shared} of {len(dev.instances)} examples with test"
        n = len(train.instances)
        k = dev_count(self.dev_size, n)
        if k >= n:
            raise DataError(
                f"{train.source or self.path}: task {name!r} has {n} train examples, too few to carve "
                f"{k} dev examples from; lower data.dev_size or add a dev split that is not the test split"
            )
        # Drawn among the train examples that are not also test examples (duplicated rows) when there
        # are enough; otherwise the overlap cannot be avoided, and `badit sweep` refuses such data.
        ids, contents = {x.id for x in test.instances}, {_key(x) for x in test.instances}
        clean = [i for i, x in enumerate(train.instances) if x.id not in ids and _key(x) not in contents]
        pool = clean if len(clean) >= k else list(range(n))
        picked = set(random.Random(f"dev/{DEV_SPLIT_SEED}/{name}").sample(pool, k))
        self.carved[name] = reason
        return {
            "train": dataclasses.replace(
                train, instances=[x for i, x in enumerate(train.instances) if i not in picked]
            ),
            "dev": dataclasses.replace(
                train, instances=[x for i, x in enumerate(train.instances) if i in picked]
            ),
        }

    def describe_carving(self) -> str | None:
        """One line saying which tasks' dev split was carved from train and why (None if none was)."""
        if not self.carved:
            return None
        reasons = defaultdict(list)
        for name, reason in sorted(self.carved.items()):
            reasons["missing" if reason == "missing" else "shared with test"].append(name)
        why = "; ".join(f"{why}: {_listed(names)}" for why, names in reasons.items())
        size = (
            f"{self.dev_size:.0%} (at most {DEV_CAP})"
            if isinstance(self.dev_size, float)
            else str(self.dev_size)
        )
        return (
            f"dev split carved from train for {len(self.carved)} task(s) ({why}): {size} of each task's train "
            f"examples with seed {DEV_SPLIT_SEED} (independent of the run seed), training uses the rest "
            "(data.dev_size sets the size)"
        )


def _listed(names: list[str], limit: int = 3) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _size(value: int | float) -> str:
    return f"{value:.0%}" if isinstance(value, float) and 0 < value < 1 else str(int(value))


def default_sizes(format: str) -> SplitSizes:
    """Split sizes used when nothing is configured: SuperNI's benchmark sizes, 10% test for own data."""
    return SplitSizes() if format == "superni" else OWN_DATA_SIZES


def _sizes(format: str, sizes: SplitSizes | Mapping[str, Any] | None) -> SplitSizes:
    if isinstance(sizes, SplitSizes):
        return sizes
    try:
        return dataclasses.replace(default_sizes(format), **dict(sizes or {}))
    except (TypeError, ValueError) as error:
        raise DataError(f"data.split_sizes: {error}") from None


def _default_task(path: str) -> str | None:
    """The task name of a table without a task column: the file's (or dataset's) name, if plain."""
    stem = Path(path.rstrip("/")).stem if Path(path).exists() else path.rstrip("/").split("/")[-1]
    try:
        return check_task_name(stem)
    except DataError:
        return None


def open_source(
    path: str | Path,
    format: str = "auto",
    columns: Columns | None = None,
    sizes: SplitSizes | Mapping[str, Any] | None = None,
    strict: bool = True,
) -> TaskSource:
    """The tasks at `path`. `sizes`: a SplitSizes, or some of its fields (e.g. {test: 20, seed: 1})
    over the format's defaults. `strict=False` keeps own data's row problems in `.problems` instead
    of raising (for `badit data check`)."""
    path = str(path)
    if path.startswith(GENERATED_PREFIX):  # a suite generated in memory (badit.data.synthetic)
        return GeneratedSource(path, generated_sizes(sizes))
    format = detect_format(path, format)
    split_sizes = _sizes(format, sizes)
    if format == "superni":
        return SuperNISource(path, split_sizes)
    columns = columns or Columns()
    if format == "datasets":
        tables = load_hf(path, columns)
    else:
        if Path(path).is_dir():
            raise DataError(f"{path}: a folder, but data.format is {format}; give the .{format} file")
        tables = [read_jsonl(path) if format == "jsonl" else read_csv(path)]
    return TableSource(tables, path, format, columns, split_sizes, _default_task(path), strict)


def source_from_dataset(
    dataset: Any,
    name: str = "dataset",
    columns: Columns | None = None,
    sizes: SplitSizes | Mapping[str, Any] | None = None,
) -> TableSource:
    """Tasks of an in-memory `datasets.Dataset` / `DatasetDict`; `name` stands for it in messages
    (and is the task name when there is no task column)."""
    columns = columns or Columns()
    tables = dataset_tables(dataset, name, columns)
    return TableSource(tables, name, "datasets", columns, _sizes("datasets", sizes), _default_task(name))


# `badit data check`


def _splits(source) -> tuple[str, ...]:
    """The splits shown: dev only where the source has (or is asked to split off) dev data."""
    if isinstance(source, SuperNISource):
        has_dev = detect_layout(Path(source.path)) == "folders" or source.sizes.dev != 0
    else:
        has_dev = source.sizes.dev != 0 or any(
            e.split == "dev" for examples in source.by_task.values() for e in examples
        )
    return SPLITS if has_dev else ("train", "test")


def _describe(source) -> str:
    if isinstance(source, SuperNISource):
        layout = detect_layout(Path(source.path))
        return "folder per task" if layout == "folders" else "raw task files, seeded split"
    return f"{source.format}, {sum(len(e) for e in source.by_task.values())} valid rows"


def check_data(
    path: str | Path,
    sizes: SplitSizes | Mapping[str, Any] | None = None,
    format: str = "auto",
    columns: Columns | None = None,
) -> tuple[str, bool]:
    """A per-task report of a data source and whether it is usable.

    Problems (make `ok` False): unreadable/invalid files or rows (missing column, empty task, prompt
    or answer, mixed formats...), tasks without train or test data, paths leaving the folder, instance
    ids shared by train and test. Notes (reported, `ok` unchanged): a missing dev split, duplicate
    ids, several Definition entries, non-English outputs, how own data is grouped and split.
    """
    try:
        source = open_source(path, format, columns, sizes, strict=False)
        names = source.task_names()
        splits = _splits(source)
    except DataError as e:
        return f"error: {e}\n", False
    problems = list(source.problems) if isinstance(source, TableSource) else []
    notes = source.notes()
    superni_folders = isinstance(source, SuperNISource) and "folder" in _describe(source)
    rows, dev_is_test = [], []
    for name in names:
        counts, ids, loaded = {}, {}, {}
        for split in splits:
            if superni_folders and split == "dev" and not (Path(path) / name / "dev.json").exists():
                counts[split] = "-"
                notes.append(f"{name}: no dev.json (optional)")
                continue
            try:
                (task,) = source.load(split, [name])
            except DataError as e:
                if split == "dev" and not superni_folders:
                    counts[split] = "-"  # own data: dev examples are optional
                    continue
                counts[split] = "ERR"
                problems.append(str(e))
                continue
            counts[split] = str(len(task.instances))
            ids[split] = {inst.id for inst in task.instances}
            loaded[split] = task
            notes.extend(
                f"{name} ({split}): {note}" for note in task.notes if superni_folders or split == "train"
            )
        leaked = ids.get("train", set()) & ids.get("test", set())
        if leaked:
            problems.append(
                f"{name}: {len(leaked)} instance ids are in both train and test, e.g. {min(leaked)!r}"
            )
        if "dev" in loaded and "test" in loaded:
            shared = shared_examples(loaded["dev"], loaded["test"])
            if shared:
                dev_is_test.append(f"{name} ({shared} of {len(loaded['dev'].instances)})")
        rows.append((name, *(counts[s] for s in splits)))
    if dev_is_test:
        notes.insert(
            0,
            f"dev == test: the dev examples are test examples (same id, or same input and answers) in "
            f"{len(dev_is_test)} of {len(rows)} tasks: {_listed(dev_is_test, 10)}; choosing on this dev split "
            f"is choosing on test, so runs carve dev from train instead (data.dev_size: {DEV_FRACTION:.0%}, "
            f"at most {DEV_CAP} per task, seed {DEV_SPLIT_SEED})",
        )

    problems = list(dict.fromkeys(problems))  # a split error is raised for each split of a task: once
    width = max(len("task"), *(len(r[0]) for r in rows)) if rows else len("task")
    lines = [f"{path} ({_describe(source)})"]
    lines.append(f"{'task':<{width}}  " + "  ".join(f"{s:>6}" for s in splits))
    lines += [f"{r[0]:<{width}}  " + "  ".join(f"{c:>6}" for c in r[1:]) for r in rows]
    lines.append(f"{len(rows)} tasks, {len(problems)} problems")
    lines += [f"note: {n}" for n in notes]
    lines += [f"problem: {p}" for p in problems[:MAX_PROBLEMS]]
    if len(problems) > MAX_PROBLEMS:
        lines.append(f"... and {len(problems) - MAX_PROBLEMS} more problems")
    return "\n".join(lines) + "\n", not problems and bool(rows)


def run_data_check(
    path: str | Path,
    out: TextIO | None = None,
    sizes: SplitSizes | Mapping[str, Any] | None = None,
    format: str = "auto",
    columns: Columns | None = None,
) -> int:
    """Print the report of `check_data`; return the exit code (0 all well, 1 problems found)."""
    report, ok = check_data(path, sizes, format, columns)
    print(report, end="", file=out or sys.stdout)
    return 0 if ok else 1
