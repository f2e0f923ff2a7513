"""Crash-safe checkpoints and adapters: written into a hidden staging folder, sealed by a manifest, renamed.

A `checkpoint-N` folder (and a stage's `adapter` folder) appears only complete: everything (adapter,
optimizer, scheduler, RNG, trainer state, the regroup state) is written into ``.staging/checkpoint-N``,
a manifest of sizes and sha256 is written last (`badit.adapter.integrity`), files and folders are
fsynced, and the folder is renamed into place (a rename within one file system is atomic). Resuming takes
the newest checkpoint that verifies and names every one it skips and why.

`kill_point` is a test hook: ``BADIT_TEST_KILL_AT=<point>[:<step>]`` makes the process SIGKILL itself at
that point, so that tests can stop a real training process where a crash hurts most.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from badit.adapter.integrity import (
    ADAPTER_WEIGHTS,
    MANIFEST_FILE,
    IntegrityError,
    check_saved_folder,
    fsync_path,
    has_manifest,
    write_manifest,
)
from badit.errors import BaditError, is_disk_full

logger = logging.getLogger(__name__)

STAGING_DIR = ".staging"
"""Subfolder of the checkpoint folder where checkpoints are written (hidden: Trainer's glob and
``get_last_checkpoint`` look for ``checkpoint-*``)."""
CHECKPOINT_RE = re.compile(r"checkpoint-(\d+)")
KILL_ENV = "BADIT_TEST_KILL_AT"
RESUME_FIX = "resume from an older checkpoint (delete this one) or retrain"

# What Trainer needs to resume from a checkpoint that has no manifest (written by badit < 0.x): the adapter
# (safetensors or PyTorch file), the trainer state; optimizer and scheduler unless save_only_model was set.
_NEEDED = (("trainer_state.json",), (ADAPTER_WEIGHTS, "adapter_model.bin"))
_NEEDED_FOR_OPTIMIZER = (("optimizer.pt",), ("scheduler.pt",))


class CheckpointError(BaditError, RuntimeError):
    """A checkpoint or adapter could not be written or no checkpoint can be resumed from; the message
    names the path and the fix (one line, shown by the CLI without a traceback)."""


class DiskFullError(CheckpointError):
    """The disk filled up while writing a checkpoint or adapter; the previous checkpoint is untouched."""


# ----------------------------------------------------------------------------------------------
# Test hook


def kill_point(point: str, step: int | None = None) -> None:
    """SIGKILL this process when ``BADIT_TEST_KILL_AT`` names ``point`` (and ``step``, if it names one).

    ``point`` names: checkpoint-write (the model is written, the optimizer is not), after-trainer-state
    (trainer_state.json is written, the regroup state is not), before-rename (sealed, not yet visible),
    final-save (the final adapter is written, not yet in place).
    """
    wanted = os.environ.get(KILL_ENV)
    if not wanted:
        return
    name, _, at = wanted.partition(":")
    if name == point and (not at or (step is not None and int(at) == step)):
        os.kill(os.getpid(), signal.SIGKILL)


# ----------------------------------------------------------------------------------------------
# Writing


@contextmanager
def staged_write(staging: Path, fresh: bool = True) -> Iterator[Path]:
    """Create ``staging`` (removing a leftover one when ``fresh``; under a launcher the processes share
    it, so only a single process may remove it); on any error remove it again; a full disk becomes
    `DiskFullError` naming the file (or folder) being written."""
    if fresh:
        shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True, exist_ok=True)
    try:
        yield staging
    except BaseException as e:
        _discard(staging)
        if is_disk_full(e):
            path = getattr(e, "filename", None) or staging
            raise DiskFullError(f"disk full while writing {path}: free space and rerun with --resume") from e
        raise


def seal(staging: Path, final: Path, before_rename: Callable[[], None] | None = None) -> None:
    """(Inside `staged_write`.) Write the manifest of ``staging`` (fsyncing its files), rename it to ``final`` and fsync the parent.

    An existing ``final`` (the same step saved again, or an older final adapter) is moved aside first and
    removed after the rename, so that ``final`` is never a mixture of the two.
    """
    write_manifest(staging)
    if before_rename is not None:
        before_rename()
    old = final.with_name(f".{final.name}.old")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(staging, final)
    fsync_path(final.parent)
    shutil.rmtree(old, ignore_errors=True)
    _discard(staging)


def _discard(staging: Path) -> None:
    """Remove ``staging`` and its ``.staging`` parent once empty."""
    shutil.rmtree(staging, ignore_errors=True)
    if staging.parent.name == STAGING_DIR:
        with contextlib.suppress(OSError):  # kept while another checkpoint is being written there
            staging.parent.rmdir()


# ----------------------------------------------------------------------------------------------
# Reading


def checkpoint_step(path: Path) -> int | None:
    match = CHECKPOINT_RE.fullmatch(path.name)
    return int(match.group(1)) if match else None


def checkpoint_problem(folder: Path, needs_optimizer: bool = True) -> str | None:
    """Why Trainer cannot resume from ``folder`` (None: it can): a manifest that does not verify, non-finite
    adapter weights or, without a manifest (an older badit), a missing file Trainer needs."""
    try:
        check_saved_folder(folder, RESUME_FIX)
    except IntegrityError as e:
        return str(e)
    if has_manifest(folder):
        return None
    needed = _NEEDED + (_NEEDED_FOR_OPTIMIZER if needs_optimizer else ())
    for alternatives in needed:
        if not any((folder / name).is_file() for name in alternatives):
            return f"{folder / alternatives[0]} is missing (an unfinished checkpoint)"
    return None


def remove_staging(checkpoint_dir: Path) -> None:
    """Remove the staging folder left by a process killed while writing a checkpoint."""
    staging = checkpoint_dir / STAGING_DIR
    if staging.exists():
        logger.info("removing %s, left by an interrupted checkpoint write", staging)
        shutil.rmtree(staging, ignore_errors=True)


def resumable_checkpoint(checkpoint_dir: str | os.PathLike, needs_optimizer: bool = True) -> Path | None:
    """The newest ``checkpoint-N`` in ``checkpoint_dir`` that Trainer can resume from (see
    `checkpoint_problem`), warning about each newer one skipped; None when there is no checkpoint.

    Raises CheckpointError when there are checkpoints but none is usable (training from step 0 in
    a folder of damaged checkpoints would hide the damage).
    """
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        return None
    found = sorted(
        (p for p in checkpoint_dir.iterdir() if p.is_dir() and checkpoint_step(p) is not None),
        key=checkpoint_step,
        reverse=True,
    )
    skipped = []
    for folder in found:
        problem = checkpoint_problem(folder, needs_optimizer)
        if problem is None:
            if not has_manifest(folder):
                logger.warning(
                    "%s has no %s (written by an older badit): resuming from it unverified",
                    folder,
                    MANIFEST_FILE,
                )
            return folder
        logger.warning("skipping checkpoint %s: %s", folder.name, problem)
        skipped.append(folder.name)
    if skipped:
        raise CheckpointError(
            f"no usable checkpoint in {checkpoint_dir} ({', '.join(skipped)} damaged, see the warnings): "
            "move the checkpoints folder away to train from the start"
        )
    return None
