"""Folders that one badit command writes whole, given by the user with ``--output``: an export, the
results of ``badit eval RUN --output DIR``, an analysis written elsewhere than its run.

The rule (docs/reliability.md, "Nothing lost"): such a command writes into a folder that does not exist,
an empty one, or one the same kind of command wrote before, which it may replace; it never replaces a run
folder (runs are never marked as a command's output), a folder that holds what it reads, or anyone's
files. A folder's writer is known from its marker
file, `OUTPUT_MARKER`, which the command writes into the folder before the folder takes its place.
Standard library only: the adapter's exporter and the experiments use it alike.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from badit.errors import BaditError

OUTPUT_MARKER = ".badit-output"
"""In a folder a badit command wrote whole: {"badit_output": KIND} (KIND: the command: "export", "eval", "analyze")."""


class OutputError(BaditError, ValueError):
    """``--output`` names a folder the command may not write into."""


def written_by(folder: str | os.PathLike) -> str | None:
    """The kind of command whose marker ``folder`` holds, or None."""
    try:
        data = json.loads((Path(folder) / OUTPUT_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    kind = data.get("badit_output") if isinstance(data, dict) else None
    return kind if isinstance(kind, str) else None


def check_output_folder(
    folder: str | os.PathLike, kind: str, reads: tuple[str | os.PathLike, ...] = ()
) -> Path:
    """``folder`` resolved, if a ``kind`` command may write it whole; an `OutputError` (one line, the fix)
    if it is a file, is or holds one of the folders the command ``reads``, is a run or sweep folder, or
    holds files that no ``kind`` command wrote."""
    path = Path(folder).resolve()
    for source in reads:
        source = Path(source).resolve()
        if path == source or path in source.parents:
            what = "is" if path == source else "holds"
            raise OutputError(
                f"--output {path} {what} {source}, which this command reads; choose a new folder for the {kind}"
            )
    if not path.exists():
        return path
    if not path.is_dir():
        raise OutputError(f"--output {path} is a file; choose a new folder for the {kind}")
    entries = [entry.name for entry in path.iterdir() if entry.name != ".lock"]
    if not entries:
        return path
    if written_by(path) != kind:  # a run folder, a sweep, another command's output, a user's files
        raise OutputError(
            f"--output {path} holds files that no `badit {kind}` wrote ({len(entries)} entries, e.g. "
            f"{sorted(entries)[0]}); badit replaces only its own output: choose a new folder (or empty this one "
            "yourself)"
        )
    return path


def mark_output_folder(folder: str | os.PathLike, kind: str) -> None:
    """Write the marker that makes ``folder`` a ``kind`` command's output (one it may replace later)."""
    (Path(folder) / OUTPUT_MARKER).write_text(json.dumps({"badit_output": kind}) + "\n", encoding="utf-8")
