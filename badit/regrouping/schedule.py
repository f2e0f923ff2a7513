"""When to regroup, from the BaditConfig fields regroup / regroup_every / regroup_until."""

from __future__ import annotations

from typing import Any


def regroup_due(config: Any, *, step: int, total_steps: int | None, epoch_end: bool) -> bool:
    """Whether a regroup is due after optimizer step `step` (1-based) of `total_steps`.

    Called by the training loop after every optimizer step (epoch_end=False) and at every epoch end
    (epoch_end=True). config.regroup=False: never (the SVD-MoE ablation). regroup_every="epoch": at
    epoch ends; an int N: every N optimizer steps. Only while step <= regroup_until * total_steps
    (None: throughout), and never after the last step, where it would only change the final model.
    """
    if not getattr(config, "regroup", True):
        return False
    every = getattr(config, "regroup_every", "epoch")
    if not (every == "epoch" or (isinstance(every, int) and not isinstance(every, bool) and every > 0)):
        raise ValueError(
            f'regroup_every must be "epoch" or a positive number of optimizer steps, got {every!r}'
        )
    until = getattr(config, "regroup_until", 0.5)
    if total_steps is not None:
        if step >= total_steps:
            return False
        if until is not None and step > until * total_steps + 1e-9:
            return False
    if every == "epoch":
        return epoch_end
    return not epoch_end and step > 0 and step % every == 0
