"""When to regroup, from the BaditConfig fields regroup / regroup_every / regroup_until.

The fields are validated (and defaulted) once, by `BaditConfig`; this module only reads them.
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only a type: `badit report` reads the schedule without importing PEFT (and torch)
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
    if step == 1 and not epoch_end and total_steps is not None and every != "epoch":
        # an own loop's first call: say at once when its schedule leaves no step to regroup at
        # (the CLI and RegroupCallback check this before training: `never_regroups`)
        reason = never_regroups(config, total_steps=total_steps, steps_per_epoch=total_steps)
        if reason is not None:
            warnings.warn(f"BADIT: {reason}", stacklevel=2)
    if total_steps is not None:
        if step >= total_steps:
            return False
        if until is not None and step > until * total_steps + 1e-9:
            return False
    if every == "epoch":
        return epoch_end
    return not epoch_end and step > 0 and step % every == 0


def never_regroups(config: PeftConfig, *, total_steps: int, steps_per_epoch: int) -> str | None:
    """Why a run of ``total_steps`` optimizer steps (``steps_per_epoch`` per epoch) would never regroup,
    with the fix; None when `regroup_due` fires at least once (or regrouping is off by choice).

    The first regroup falls at step ``steps_per_epoch`` (regroup_every="epoch") or N (an int), and is
    allowed at steps <= regroup_until * total_steps and < total_steps (see `regroup_due`). E.g. the
    README's 30 steps of 21 per epoch with regroup_until 0.5: first at step 21, last allowed step 15.
    """
    if not config.regroup or not config.regroup_until or total_steps < 1:
        return None  # regrouping off by choice (regroup=False, regroup_until=0)
    every, until = config.regroup_every, config.regroup_until
    first = steps_per_epoch if every == "epoch" else int(every)
    last = min(int(until * total_steps + 1e-9), total_steps - 1)  # the last step a regroup may fall on
    if first <= last:
        return None
    where = (
        f"the end of epoch 1, step {first}" if every == "epoch" else f"step {first} (regroup_every={first})"
    )
    # the smallest max_steps with first <= until * M and first < M
    needed = max(first + 1, math.ceil(first / until - 1e-9))
    fixes = [f"regroup_every=N with N <= {last} (e.g. {max(1, last // 2)})"] if last >= 1 else []
    fixes.append(f"max_steps >= {needed}")
    if first < total_steps:
        fixes.append(f"regroup_until >= {math.ceil(first / total_steps * 100 - 1e-6) / 100:g}")
    return (
        f"this run never regroups: the first regroup would fall at {where}, but regrouping stops after step "
        f"{last} (regroup_until {until:g} of {total_steps} steps{', never at the last' if last == total_steps - 1 else ''}),"
        f" so BADIT trains as svd-moe; set {' or '.join(fixes) if fixes else 'a longer schedule'}"
        " (method.* / training.* in a run config)"
    )
