"""`badit data check PATH`: per-task counts and every problem found, without tracebacks."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from badit.data.files import DataError
from badit.data.splits import SplitSizes
from badit.data.tasks import detect_layout, list_tasks, load_task


def check_data(path: str | Path, sizes: SplitSizes | None = None) -> tuple[str, bool]:
    """A per-task report of a data folder (either layout) and whether it is usable.

    Problems (make `ok` False): unreadable/invalid files, missing fields, empty tasks, missing train or
    test data, paths leaving the folder, instance ids shared by train and test. Notes (reported, `ok`
    unchanged): a missing dev split, duplicate ids, several Definition entries, non-English outputs.
    """
    root = Path(path)
    sizes = sizes or SplitSizes()
    try:
        layout = detect_layout(root)
        names = list_tasks(root)
    except DataError as e:
        return f"error: {e}\n", False
    splits = ("train", "dev", "test") if layout == "folders" or sizes.dev > 0 else ("train", "test")
    rows, problems, notes = [], [], []
    for name in names:
        counts, ids = {}, {}
        for split in splits:
            if layout == "folders" and split == "dev" and not (root / name / "dev.json").exists():
                counts[split] = "-"
                notes.append(f"{name}: no dev.json (optional)")
                continue
            try:
                task = load_task(root, name, split, sizes)
            except DataError as e:
                counts[split] = "ERR"
                problems.append(str(e))
                continue
            counts[split] = str(len(task.instances))
            ids[split] = {inst.id for inst in task.instances}
            notes.extend(
                f"{name} ({split}): {note}" for note in task.notes if layout == "folders" or split == "train"
            )
        leaked = ids.get("train", set()) & ids.get("test", set())
        if leaked:
            problems.append(
                f"{name}: {len(leaked)} instance ids are in both train and test, e.g. {min(leaked)!r}"
            )
        rows.append((name, *(counts[s] for s in splits)))

    width = max(len("task"), *(len(r[0]) for r in rows))
    lines = [f"{root} ({'folder per task' if layout == 'folders' else 'raw task files, seeded split'})"]
    lines.append(f"{'task':<{width}}  " + "  ".join(f"{s:>6}" for s in splits))
    lines += [f"{r[0]:<{width}}  " + "  ".join(f"{c:>6}" for c in r[1:]) for r in rows]
    lines.append(f"{len(rows)} tasks, {len(problems)} problems")
    lines += [f"note: {n}" for n in notes]
    lines += [f"problem: {p}" for p in problems]
    return "\n".join(lines) + "\n", not problems


def run_data_check(path: str | Path, out: TextIO | None = None, sizes: SplitSizes | None = None) -> int:
    """Print the report of `check_data`; return the exit code (0 all well, 1 problems found)."""
    report, ok = check_data(path, sizes)
    print(report, end="", file=out or sys.stdout)
    return 0 if ok else 1
