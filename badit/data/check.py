"""`badit data check PATH`: per-task counts and every problem found, without tracebacks, for every
data source (SuperNI folders, JSONL, CSV, datasets; see `badit.data.sources`)."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from badit.data.files import DataError
from badit.data.rows import MAX_PROBLEMS, Columns
from badit.data.sources import SuperNISource, TableSource, open_source
from badit.data.splits import SplitSizes
from badit.data.tasks import detect_layout

SPLITS = ("train", "dev", "test")


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
