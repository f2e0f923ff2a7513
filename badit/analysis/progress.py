"""The progress bar of the analyses: one step per task's batch (ETA, tasks/s)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from tqdm.auto import tqdm


def task_bar(batches: Mapping[str, object], label: str | None) -> Iterable:
    """The batches of `batches`, under a progress bar labelled `label` (None: no bar)."""
    return tqdm(
        batches.values(),
        total=len(batches),
        desc=label,
        unit="task",
        dynamic_ncols=True,
        disable=label is None,
    )
