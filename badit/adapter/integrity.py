"""Integrity of saved folders (adapters, checkpoints): a manifest of file sizes and sha256, and finite weights.

A folder is sealed by `write_manifest` once every file in it is complete; `verify_manifest` then tells a
truncated or overwritten file (same size, other bytes) from a good one before anything is loaded, and
`check_finite_safetensors` refuses weights holding NaN or inf (which load without complaint and give
empty predictions). Hand-written because safetensors checks only the header and PEFT checks nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from badit.errors import BaditError

MANIFEST_FILE = "badit-manifest.json"
MANIFEST_VERSION = 1
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_CHUNK = 1 << 20  # bytes hashed per read: 1 MiB keeps memory flat for multi-GB optimizer files
UNLISTED = frozenset({MANIFEST_FILE, "README.md"})
"""Files a manifest does not list: itself, and the model card, which a run rewrites with its scores after
evaluation (badit/adapter/card.py) and which nothing loads."""


class IntegrityError(BaditError, ValueError):
    """A saved file is damaged: the message names the file and what to do."""


class UnreadableWeightsError(IntegrityError):
    """A weights file that cannot be read as safetensors at all (truncated, empty); ``reason``: the reader's
    own words."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_path(path: Path) -> None:
    """Flush a file or a folder (its entries: created and renamed names) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and p.relative_to(folder).as_posix() not in UNLISTED
    )


def write_manifest(folder: str | os.PathLike) -> dict:
    """Fsync every file of ``folder`` (subfolders included), then write its manifest
    {"version", "files": {relative path: {"bytes", "sha256"}}} atomically; returns the manifest.

    Call it last, when the folder is complete: the manifest is what says so.
    """
    folder = Path(folder)
    files = {}
    for path in _files(folder):
        fsync_path(path)
        files[path.relative_to(folder).as_posix()] = {"bytes": path.stat().st_size, "sha256": sha256_of(path)}
    manifest = {"version": MANIFEST_VERSION, "files": files}
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{MANIFEST_FILE}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, folder / MANIFEST_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    for sub in {p.parent for p in _files(folder)} | {folder}:
        fsync_path(sub)
    return manifest


def manifest_problem(folder: str | os.PathLike) -> str | None:
    """Why ``folder`` does not match its manifest (the first problem found), None when it does or
    when it has no manifest (see `has_manifest`)."""
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        files = json.loads(path.read_text(encoding="utf-8"))["files"]
        expected = {name: (int(entry["bytes"]), str(entry["sha256"])) for name, entry in files.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return f"{path} is unreadable or damaged"
    for name, (size, digest) in sorted(expected.items()):
        file = folder / name
        if not file.is_file():
            return f"{file} is missing"
        actual = file.stat().st_size
        if actual != size:
            return f"{file} has {actual} bytes, the manifest says {size}"
        if sha256_of(file) != digest:
            return f"{file} does not match its sha256 in {MANIFEST_FILE} (damaged or overwritten)"
    return None


def has_manifest(folder: str | os.PathLike) -> bool:
    return (Path(folder) / MANIFEST_FILE).is_file()


def nonfinite_tensor(path: str | os.PathLike) -> str | None:
    """The name of the first tensor (in name order) of a safetensors file holding NaN or inf, else None.

    Raises IntegrityError when the file cannot be read as safetensors (truncated header, ...).
    """
    try:
        with safe_open(str(path), framework="pt") as f:
            for name in sorted(f.keys()):
                tensor = f.get_tensor(name)
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                    return name
    except (SafetensorError, OSError, RuntimeError) as e:
        raise UnreadableWeightsError(f"{path}: not a readable safetensors file ({e})", str(e)) from None
    return None


def check_saved_folder(folder: str | os.PathLike, fix: str) -> None:
    """IntegrityError unless ``folder`` matches its manifest (where it has one) and its adapter weights
    are finite. ``fix`` ends the message: what the user can do (resume from an older checkpoint, ...)."""
    folder = Path(folder)
    problem = manifest_problem(folder)
    if problem is not None:
        raise IntegrityError(f"{problem}: {fix}")
    weights = folder / ADAPTER_WEIGHTS
    if weights.is_file():
        try:
            name = nonfinite_tensor(weights)
        except UnreadableWeightsError as e:
            raise UnreadableWeightsError(f"{e}: {fix}", e.reason) from None
        if name is not None:
            raise IntegrityError(f"{weights}: tensor {name} holds NaN or inf values: {fix}")


def check_adapter_folder(folder: str | os.PathLike) -> None:
    """`check_saved_folder` for an adapter about to be loaded (evaluation, export, a continual stage)."""
    check_saved_folder(
        folder, "the adapter is damaged; rerun training with --resume (or retrain the run) to write it again"
    )
