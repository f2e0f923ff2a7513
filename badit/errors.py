"""The one base class of the errors a user can fix (bad config, data, run folder, damaged file...).

Each subclass's message names the file or field and the fix; ``badit`` prints it as one line and
exits with the subclass's ``exit_code`` (no traceback; ``--verbose`` shows it). This module imports only
the standard library, so that any layer can raise these errors and the command catches them without torch.
Errors of other libraries that the user can fix (a full disk, a damaged tensor file) are worded here too.
"""

from __future__ import annotations

import errno
import pickle
import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # C0 (ESC, CR, BEL...), DEL, C1 (CSI...)


def printable(text) -> str:
    """``text`` with every control character replaced by a space: names and messages that come from
    files (task names, run names, a config's values) cannot colour, clear or retitle a terminal (ANSI
    escapes start with ESC or CSI), nor hide what precedes them with a carriage return."""
    return _CONTROL.sub(" ", str(text))


def one_line(message: str) -> str:
    """A message on one line (YAML and JSON parsers report over several), without control characters."""
    return printable(" ".join(part.strip() for part in str(message).splitlines() if part.strip()))


class BaditError(Exception):
    """A problem in the user's input or files, with the fix in the message."""

    exit_code = 2
    """The exit status of ``badit`` when this error ends a command."""

    def one_line(self) -> str:
        return one_line(str(self))


def os_error_message(error: OSError) -> str:
    """One line for an operating-system error: what failed, on which file, and the fix."""
    where = error.filename or "a file"
    if error.errno == errno.ENOSPC or error.errno == errno.EDQUOT:
        return f"disk full while writing {where}; free some space (the last complete checkpoint is kept) and rerun"
    if error.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied on {where}; choose a folder you can write (output_dir, --output) or fix its permissions"
    if error.errno == errno.EROFS:
        return f"{where} is on a read-only file system; choose a folder you can write (output_dir, --output)"
    if error.errno == errno.EISDIR:
        return f"{where} is a folder; give a file name"
    if error.errno == errno.ENOTDIR:
        return f"{where}: a part of this path is a file, not a folder; choose another path"
    return one_line(f"{where}: {error.strerror or error}")


def safetensors_message(message: str) -> str:
    """One line for an error of the safetensors library, which names no file: a full disk while writing,
    else a damaged file where badit did not check it first (e.g. a checkpoint without a manifest)."""
    if f"os error {errno.ENOSPC}" in message:
        return f"disk full while writing a tensor file ({message}); free some space and rerun"
    if "serializing" in message and "deserializing" not in message:
        return f"cannot write a tensor file ({message}); check the output folder's disk and permissions"
    return (
        f"a saved tensor file is damaged or truncated ({message}); restore it, or resume from an earlier "
        "checkpoint by deleting the damaged one"
    )


TORCH_WRITE_FAILURES = ("write failed", "unexpected pos", "iostream error")
"""How torch.save reports a failed write (a RuntimeError without the errno), as seen on a full tmpfs:
``[enforce fail at inline_container.cc:672] unexpected pos 1472 vs 1366``, ``... iostream error`` or
``... file write failed``, depending on where the zip writer stopped."""


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` (or an error it was raised from) is a full disk: ENOSPC/EDQUOT by errno where the
    library keeps it; torch's and safetensors' messages where they do not."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError):
            if error.errno in (errno.ENOSPC, errno.EDQUOT):
                return True
        else:
            message = str(error)
            # safetensors (a Rust library): SafetensorError("... IoError(Os { code: 28, ... })")
            if type(error).__name__ == "SafetensorError":
                if f"code: {errno.ENOSPC}," in message or f"os error {errno.ENOSPC}" in message:
                    return True
            elif isinstance(error, RuntimeError) and any(m in message for m in TORCH_WRITE_FAILURES):
                return True
        error = error.__cause__ or error.__context__
    return False


def user_error_message(error: BaseException) -> str | None:
    """The one line ``badit`` prints for an error the user can fix: a BaditError's message, a missing file,
    an operating-system error (disk full, permissions...), a damaged safetensors file; None for a bug."""
    if isinstance(error, BaditError):
        return error.one_line()
    if isinstance(error, FileNotFoundError):  # a path the user gave (model, data, ...), named in the message
        return one_line(str(error))
    if isinstance(error, OSError):
        return os_error_message(error)
    if type(error).__name__ == "SafetensorError":  # safetensors' Rust error type, not importable cheaply
        return safetensors_message(one_line(str(error)))
    if isinstance(error, pickle.UnpicklingError):  # torch.load(weights_only=True) refused a file
        return (
            f"a checkpoint or weights file is a pickle that torch's safe loader refuses (loading it could run "
            f"code): {one_line(str(error))[:200]}; restore the file from where it came from, or delete that "
            "checkpoint (badit's own are safetensors with a manifest)"
        )
    if is_disk_full(error):  # torch.save's failed write: a RuntimeError without errno or file name
        return (
            f"disk full ({one_line(str(error))[:200]}); free some space (the last complete checkpoint is kept) "
            "and rerun"
        )
    return None
