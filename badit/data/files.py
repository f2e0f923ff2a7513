"""Safe file access for data and run folders: clear errors for bad files, atomic writes."""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from badit.errors import BaditError


class DataError(BaditError, ValueError):
    """Bad input data: the message names the file, what is wrong and how to fix it."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` so readers see either the old file or the complete new one.

    The file gets the usual permissions (0666 minus the umask), not mkstemp's private 0600.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a folder", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as error:
        Path(tmp).unlink(missing_ok=True)  # our own temp file, never the target
        if error.filename is None:  # a failed write (e.g. disk full) names no file: name the target
            raise OSError(error.errno, error.strerror, str(path)) from error
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically (see `atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def atomic_write_jsonl(path: str | os.PathLike, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append ``line`` and a newline to the text file ``path`` (a log); a failed write (disk full) is an
    OSError naming the file, as the failed writes of `atomic_write_bytes` are."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
    except OSError as error:
        if error.filename is None:
            raise OSError(error.errno, error.strerror, str(path)) from error
        raise


def inside(root: Path, path: Path) -> Path:
    """`path` with symlinks resolved; DataError if it lies outside `root` (e.g. `../` or a symlink)."""
    resolved = path.resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise DataError(
            f"{path}: resolves to {resolved}, outside the data folder {root.resolve()}; "
            "move the data into the folder instead of linking to it, and do not use '..' in task names"
        )
    return resolved


def decode_utf8(raw: bytes, source: str, encoding: str = "utf-8") -> str:
    """`raw` decoded (`encoding`: utf-8, or utf-8-sig to accept a byte-order mark); DataError naming
    `source`, the byte, its offset and its line."""
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(
            f"{source}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start}) on line {line}; "
            "re-save the file as UTF-8"
        ) from None


def read_text(path: str | os.PathLike, encoding: str = "utf-8") -> str:
    """The text of a UTF-8 file; DataError for a missing, unreadable or non-UTF-8 file. The one reader
    of data files (task JSON, JSONL, CSV): every such file fails with the same messages."""
    path = Path(path)
    if path.exists() and not path.is_file():  # /dev/zero, a pipe: endless or blocking, never a data file
        raise DataError(f"{path}: not a regular file (a device, a pipe or a folder); check data.path")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found; check data.path") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    return decode_utf8(raw, str(path), encoding)


def parse_json(text: str, source: str) -> Any:
    """Parsed JSON; DataError naming `source` and the position of the problem."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{source}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    except RecursionError:
        raise DataError(f"{source}: JSON nested too deeply to be data; fix the file") from None


def parse_json_bytes(raw: bytes, source: str) -> Any:
    """Decode UTF-8 JSON (e.g. a download); DataError naming `source` and the position of the problem."""
    return parse_json(decode_utf8(raw, source), source)


def read_json_file(path: str | os.PathLike) -> Any:
    """Read and parse a UTF-8 JSON file (see `read_text`)."""
    return parse_json(read_text(path), str(path))
