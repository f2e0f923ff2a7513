"""The non-finite guard: a NaN/inf loss or gradient stops training, or drops that optimizer step.

transformers' Trainer only filters non-finite losses out of its logs (``logging_nan_inf_filter``)
and applies the step anyway, so one bad batch turns the adapter into NaN and the run still exits 0.
``BaditTrainer`` calls ``NonFiniteGuard.check`` after every backward pass (``training_step``); at the
pass that completes an optimizer step (gradients all-reduced under DDP, not yet clipped), the guard
decides, with one host synchronisation per optimizer step:

- ``stop`` (default): raise ``NonFiniteError`` naming the step and the run/stage before the step is
  applied, so neither the parameters nor the optimizer state ever hold a NaN, and the stage's adapter
  is not written (the checkpoints written before stay);
- ``skip``: drop the step by setting every gradient to None: torch optimizers (and bitsandbytes',
  transformers' Adafactor) leave a parameter without a gradient and its state untouched, so the step
  changes nothing; the learning-rate schedule moves on (the step counts in ``global_step``). After
  ``MAX_CONSECUTIVE_SKIPS`` skipped steps in a row, training stops as with ``stop``.

With fp16 loss scaling, gradient overflow is the GradScaler's business (it skips such steps and lowers
the scale, as fp16 training always does): the guard then checks the loss only, and in ``skip`` mode
leaves the skip of a non-finite loss's step to the scaler (its gradients are non-finite too).

Under DDP each rank's loss is local (its gradients are all-reduced), so the per-rank verdict is
all-reduced (MAX) once per optimizer step: every rank stops or skips at the same step.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.distributed as dist

from badit.errors import BaditError

logger = logging.getLogger(__name__)

MODES = ("stop", "skip")

MAX_CONSECUTIVE_SKIPS = 10
"""Consecutive skipped steps after which ``skip`` stops too. A skipped step leaves the parameters as
they were, so the next step's verdict depends only on its batch: isolated bad batches (a poisoned
example, an overflow on one long sequence) give isolated skips, while 10 bad batches in a row mean
that most batches are bad (the chance of 10 in a row is below 0.1% even when half of them are), i.e.
the data, the learning rate or the loaded weights are broken and skipping would burn the rest of the
run doing nothing. 10 steps is also a small waste before the error is reported."""


class NonFiniteError(BaditError, RuntimeError):
    """Training met a non-finite loss or gradient (``training.on_nonfinite: stop``, or too many skips)."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


def _nonfinite_gradients(model: torch.nn.Module) -> torch.Tensor | None:
    """A 0-d bool tensor: whether any gradient of ``model`` holds a NaN/inf (None without gradients).

    One fused reduction: the max-abs (inf) norm of all gradients is finite exactly when every entry
    is (NaN propagates through max; a 2-norm could overflow on large finite values).
    """
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return None
    total = torch.nn.utils.get_total_norm(grads, norm_type=float("inf"))
    return ~torch.isfinite(total)


class NonFiniteGuard:
    """Watches every backward pass of a Trainer; at each optimizer step, stops or skips when non-finite.

    ``loss_scaling``: fp16 with a GradScaler (see the module docstring). ``where`` names the run or stage in messages; ``log_fn`` receives ``{"nonfinite/skipped_steps": n}``
    for the next log record (the Trainer's ``queue_logs``). ``skipped_steps`` lists the optimizer steps
    (1-based, as ``global_step`` after the step) that were dropped.
    """

    def __init__(
        self,
        mode: str = "stop",
        where: str = "training",
        log_fn: Callable[[dict[str, float]], None] | None = None,
        max_consecutive: int = MAX_CONSECUTIVE_SKIPS,
        loss_scaling: bool = False,
    ):
        if mode not in MODES:
            raise ValueError(f"training.on_nonfinite must be one of {', '.join(MODES)}, got {mode!r}")
        self.mode, self.where, self.log_fn, self.max_consecutive = mode, where, log_fn, max_consecutive
        self.loss_scaling = loss_scaling  # fp16 GradScaler: it checks and skips the gradients itself
        self.skipped_steps: list[int] = []
        self.consecutive = 0
        self._bad_loss: torch.Tensor | None = None  # over the micro-batches of the current step

    def check(self, model: torch.nn.Module, loss: torch.Tensor, step: int, sync_step: bool) -> None:
        """Called after each backward pass with its loss; ``sync_step``: this pass completes optimizer
        step ``step`` (its gradients are final). Raises ``NonFiniteError`` or drops the gradients."""
        bad_loss = ~torch.isfinite(loss.detach()).all()  # stays on the device until the step's verdict
        self._bad_loss = bad_loss if self._bad_loss is None else self._bad_loss | bad_loss
        if not sync_step:
            return
        verdict = self._bad_loss
        self._bad_loss = None
        bad_grads = None if self.loss_scaling else _nonfinite_gradients(model)
        if bad_grads is not None:
            verdict = verdict | bad_grads.to(verdict.device)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            flag = verdict.to(torch.int32)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            verdict = flag.bool()
        if not bool(verdict):
            self.consecutive = 0
            return
        self._on_nonfinite(model, step)

    def _on_nonfinite(self, model: torch.nn.Module, step: int) -> None:
        advice = "lower training.learning_rate or check the data"
        if self.mode == "stop":
            raise NonFiniteError(
                f"{self.where}: non-finite loss or gradient at step {step}; training stopped before "
                f"applying it, no adapter written ({advice}, then continue with --resume from the last "
                "checkpoint, or set training.on_nonfinite=skip to drop such steps)",
                step,
            )
        self.consecutive += 1
        self.skipped_steps.append(step)
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteError(
                f"{self.where}: {self.consecutive} consecutive steps (up to step {step}) had a non-finite "
                f"loss or gradient; training stopped, no adapter written ({advice})",
                step,
            )
        if not self.loss_scaling:
            model.zero_grad(set_to_none=True)  # the optimizer skips parameters without a gradient
        logger.warning(
            "%s: non-finite loss or gradient at step %d: step skipped (%d so far)",
            self.where,
            step,
            len(self.skipped_steps),
        )
        if self.log_fn is not None:
            self.log_fn({"nonfinite/skipped_steps": float(len(self.skipped_steps))})


def nonfinite_parameters(model: torch.nn.Module) -> list[str]:
    """The names of the trainable parameters of ``model`` holding a NaN or inf (one host sync in all).

    The guard checks losses and gradients; an update can still overflow the parameters themselves
    (a huge learning rate: finite gradient times 1e308), at the last step most of all, when no later
    loss would show it. `train_stage` calls this before the adapter is written.
    """
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad and p.is_floating_point()]
    if not named:
        return []
    finite = torch.stack([torch.isfinite(p.detach()).all().to("cpu", non_blocking=True) for _, p in named])
    return [name for (name, _), ok in zip(named, finite.tolist(), strict=True) if not ok]


def check_final_parameters(model: torch.nn.Module, where: str, step: int) -> None:
    """Raise ``NonFiniteError`` (nothing written) when a trainable parameter is not finite after training."""
    bad = nonfinite_parameters(model)
    if bad:
        raise NonFiniteError(
            f"{where}: after step {step}, {len(bad)} adapter tensor(s) hold NaN/inf (first: {bad[0]}); no "
            "adapter written (lower training.learning_rate, then train again with --overwrite)",
            step,
        )
