"""When to regroup, from the BaditConfig fields regroup / regroup_every / regroup_until.

The fields are validated (and defaulted) once, by `BaditConfig`; this module only reads them.
"""

from __future__ import annotations

from peft.config import PeftConfig


def regroup_due(config: PeftConfig, *, step: int, total_steps: int | None, epoch_end: bool) -> bool:
    """Whether a regroup is due after optimizer step `step` (1-based) of `total_steps`.

    Called by the training loop after every optimizer step (epoch_end=False) and at every epoch end
    (epoch_end=True). config.regroup=False: never (the SVD-MoE ablation). regroup_every="epoch": at
    epoch ends; an int N: every N optimizer steps. Only while step <= regroup_until * total_steps
    (None: throughout), and never after the last step, where it would only change the final model.
    `config` is the adapter's `BaditConfig` (typed as PEFT's base class: this package sits below
    `badit.adapter`).
    """
    if not config.regroup:
        return False
    every, until = config.regroup_every, config.regroup_until
    if total_steps is not None:
        if step >= total_steps:
            return False
        if until is not None and step > until * total_steps + 1e-9:
            return False
    if every == "epoch":
        return epoch_end
    return not epoch_end and step > 0 and step % every == 0
