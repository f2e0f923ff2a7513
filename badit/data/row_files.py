"""JSONL and CSV files read into `Table`s of rows, with the line of every row kept for messages.

Read with the standard library's json and csv modules rather than through `datasets`: a bad line
then gets an error naming that line, nothing is cached on disk, and a file is read in a blink.
(`data.format: datasets` reads the same files through `datasets.load_dataset` instead.)
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from badit.data.files import DataError
from badit.data.rows import Table


def _text(path: Path, encoding: str = "utf-8") -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found; check data.path") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(
            f"{path} line {line}: not valid UTF-8 (byte 0x{raw[e.start]:02x}); re-save the file as UTF-8"
        ) from None


def read_jsonl(path: str | Path) -> Table:
    """One JSON object per line (blank lines skipped)."""
    path = Path(path)
    rows = []
    for number, line in enumerate(_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append((number, json.loads(line)))
        except json.JSONDecodeError as e:
            raise DataError(
                f"{path} line {number}: invalid JSON at column {e.colno} ({e.msg}); "
                "each line must be one JSON object"
            ) from None
    return Table(str(path), rows)


def read_csv(path: str | Path) -> Table:
    """A CSV file with a header row (an Excel byte-order mark is accepted); rows keep their line."""
    path = Path(path)
    reader = csv.reader(io.StringIO(_text(path, "utf-8-sig"), newline=""))
    try:
        header = next(reader, None)
        if header is None:
            raise DataError(
                f"{path}: empty file; the first line must name the columns (e.g. task,prompt,completion)"
            )
        header = [name.strip() for name in header]
        rows, start = [], reader.line_num + 1
        for values in reader:
            if any(v.strip() for v in values):
                if len(values) > len(header):
                    raise DataError(
                        f"{path} line {start}: {len(values)} fields but the header names {len(header)}; "
                        "quote fields that contain commas"
                    )
                rows.append((start, dict(zip(header, values))))
            start = reader.line_num + 1
    except csv.Error as e:
        raise DataError(f"{path} line {reader.line_num}: {e}; check the quoting") from None
    return Table(str(path), rows, columns=tuple(header))
