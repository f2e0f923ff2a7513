"""Where a run's tasks come from: `data.path` recognised by its form, `data.format` to force it.

| data.path                                   | format     | read by                           |
|---------------------------------------------|------------|-----------------------------------|
| `mix.jsonl`                                  | `jsonl`    | `badit.data.rows`                 |
| `mix.csv`                                    | `csv`      | `badit.data.rows`                 |
| `data.json` / `.parquet` file                | `datasets` | `datasets.load_dataset`           |
| folder written by `save_to_disk`             | `datasets` | `datasets.load_from_disk`         |
| other folder                                 | `superni`  | `badit.data.tasks` (both layouts) |
| `owner/name` that is no local path           | `datasets` | `datasets.load_dataset` (the hub) |

Every source gives the same `Task` objects, so training, evaluation and analysis never look at the
format. Tasks without a given split have their test (and dev) examples split off per task with a seed
(`badit.data.tasks.split_indices`): SuperNI raw files 1000 train / 100 test, own data 10% test.

`check_data` (`badit data check PATH`): per-task counts and every problem found, without tracebacks,
for every source.
"""

from __future__ import annotations

import dataclasses
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
    raise DataError(
        f"{path}: no such file or folder; check data.path (a .jsonl/.csv file, a saved dataset folder, "
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
    rows = []
    for name in names:
        counts, ids = {}, {}
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
            notes.extend(
                f"{name} ({split}): {note}" for note in task.notes if superni_folders or split == "train"
            )
        leaked = ids.get("train", set()) & ids.get("test", set())
        if leaked:
            problems.append(
                f"{name}: {len(leaked)} instance ids are in both train and test, e.g. {min(leaked)!r}"
            )
        rows.append((name, *(counts[s] for s in splits)))

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
