"""Trainer callbacks: the regrouping schedule, regroup state in checkpoints, a progress bar, JSONL logs."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from tqdm.auto import tqdm
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from badit.adapter.integrity import has_manifest
from badit.data.files import append_line, atomic_write_bytes

logger = logging.getLogger(__name__)

REGROUP_STATE_FILE = "regroup_state_rank{rank}.safetensors"


# ----------------------------------------------------------------------------------------------
# Regrouping


def _iter_windows(model: torch.nn.Module):
    """(key, window) for every gradient window on the model's BADIT layers (key: `layer_key`)."""
    from badit.regrouping.gradients import gradient_windows, iter_badit_layers, layer_key

    for layer_name, layer in iter_badit_layers(model):
        for adapter_name, window in gradient_windows(layer).items():
            yield layer_key(layer_name, adapter_name), window


def save_regroup_state(
    model: torch.nn.Module, folder: str | Path, rank: int = 0, last_regroup_step: int = -1
) -> None:
    """Write the gradient windows (sums since the last regroup) of this process into ``folder``.

    Each process keeps its own local gradient sums (ranks are combined when regrouping), so each
    writes its own file.
    """
    tensors, metadata = {}, {"last_regroup_step": str(last_regroup_step)}
    for key, window in _iter_windows(model):
        tensors[key] = window.statistics().detach().float().cpu().contiguous()
        metadata[f"{key}.backward_passes"] = str(window.backward_passes)
    path = Path(folder) / REGROUP_STATE_FILE.format(rank=rank)
    atomic_write_bytes(path, safetensors_bytes(tensors, metadata=metadata))


def load_regroup_state(model: torch.nn.Module, folder: str | Path, rank: int = 0) -> int | None:
    """Restore the gradient windows saved by ``save_regroup_state``; returns the last regroup step
    (None when the folder holds no regroup state)."""
    path = Path(folder) / REGROUP_STATE_FILE.format(rank=rank)
    if not path.is_file():
        fallback = Path(folder) / REGROUP_STATE_FILE.format(rank=0)
        if not fallback.is_file():
            return None
        logger.warning("%s is missing (different number of processes?): using rank 0's gradient sums", path)
        path = fallback
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    tensors = load_file(str(path))
    windows = dict(_iter_windows(model))
    missing = sorted(set(windows) - set(tensors))
    if missing:
        raise ValueError(
            f"{path}: no gradient sums for {missing[0]} (and {len(missing) - 1} more): not this model's run?"
        )
    for key, window in windows.items():
        saved = tensors[key]
        device = window.badit_A.device
        window.buffer = saved.to(device) if window.buffer is None else window.buffer.copy_(saved)
        window.backward_passes = int(metadata.get(f"{key}.backward_passes", 0))
    return int(metadata.get("last_regroup_step", -1))


def _jsonable(value):
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


class RegroupCallback(TrainerCallback):
    """Calls ``badit.regroup(model, optimizer)`` when ``badit.regrouping.regroup_due`` says so.

    ``config`` is the adapter's BaditConfig (fields regroup, regroup_every, regroup_until): by default at each
    epoch end during the first half of training, as in the paper. Each regroup's per-layer statistics
    go to ``log_file`` (one JSON line per regroup) and their means over layers (``regroup/moved``, ...)
    to the Trainer's next log record: through ``log_fn`` when given (`BaditTrainer.queue_logs`, which
    reaches every reporting callback), otherwise, under any other ``transformers.Trainer`` (TRL's
    ``SFTTrainer``, ...), added in ``on_log`` to that record's ``logs`` and its entry of
    ``state.log_history`` (callbacks after this one, and ``trainer_state.json``, see them; reporting
    callbacks registered before it, e.g. TensorBoard's, have already written that record). The gradient windows are saved with every checkpoint
    (inside it, before it is sealed: `save_checkpoint_state`) and restored from ``resume_from`` when
    training resumes.
    """

    def __init__(
        self,
        config,
        log_file: str | Path | None = None,
        log_fn: Callable[[dict[str, float]], None] | None = None,
    ):
        self.config = config
        self.log_file = Path(log_file) if log_file else None
        self.log_fn = log_fn
        self.last_regroup_step = -1
        self.resume_from: str | None = None
        self.history: list[dict] = []
        self._pending_logs: dict[str, float] = {}  # without log_fn: for the next on_log

    def on_log(self, args, state, control, logs=None, **kwargs):
        """Without ``log_fn``: the last regroups' summary joins the Trainer's log record."""
        if not self._pending_logs or logs is None:
            return
        logs.update(self._pending_logs)
        # Trainer.log appended a copy ({**logs, "step": ...}) to log_history before calling on_log
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(self._pending_logs)
        self._pending_logs = {}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._warn_if_never_regroups(args, state, kwargs.get("train_dataloader"))
        if self.resume_from and model is not None:
            step = load_regroup_state(model, self.resume_from, args.process_index)
            if step is None:
                logger.warning(
                    "%s holds no regroup state: the gradient sums restart from zero", self.resume_from
                )
            else:
                self.last_regroup_step = step
            self._regroup_pending_epoch_end(state, model, kwargs.get("optimizer"))

    def _warn_if_never_regroups(self, args, state: TrainerState, dataloader) -> None:
        """Before the first step: a schedule under which no regroup can fall (e.g. fewer steps than an
        epoch with regroup_every="epoch") trains svd-moe, not BADIT; say so once, with the fix."""
        from badit.regrouping import never_regroups

        if not state.is_world_process_zero or not state.max_steps:
            return
        try:
            batches = len(dataloader)
        except TypeError:  # an iterable dataset without a length: epochs are not known in advance
            return
        steps_per_epoch = max(-(-batches // args.gradient_accumulation_steps), 1)  # as Trainer counts them
        problem = never_regroups(self.config, total_steps=state.max_steps, steps_per_epoch=steps_per_epoch)
        if problem:
            logger.warning("BADIT: %s", problem)

    def _regroup_pending_epoch_end(self, state: TrainerState, model, optimizer) -> None:
        """Resuming from a checkpoint saved at the last step of an epoch: Trainer saves it in that step's
        ``on_step_end``, before ``on_epoch_end`` (and its regroup) runs, and the resumed run starts at the
        next epoch, so that regroup would be lost. Run it now (the optimizer state is loaded by now).

        ``state.epoch`` is ``epoch + steps / steps_in_epoch``: a whole number exactly at an epoch end.
        """
        at_epoch_end = state.epoch is not None and state.epoch > 0 and float(state.epoch).is_integer()
        if at_epoch_end and self.last_regroup_step < state.global_step:
            self._maybe_regroup(state, model, optimizer, epoch_end=True)

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        self._maybe_regroup(state, model, optimizer, epoch_end=False)

    def on_epoch_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        self._maybe_regroup(state, model, optimizer, epoch_end=True)

    def save_checkpoint_state(self, folder: Path, args, state, model) -> None:
        """Called by `BaditTrainer` while the checkpoint is still being written (before it is sealed and
        becomes visible), so that no visible checkpoint lacks the gradient sums."""
        save_regroup_state(model, folder, args.process_index, self.last_regroup_step)

    def on_save(self, args, state, control, model=None, **kwargs):
        # Under a plain transformers.Trainer (no `save_checkpoint_state` call): write into the finished
        # checkpoint, as well as can be done there. BaditTrainer's checkpoints already hold the file.
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        path = folder / REGROUP_STATE_FILE.format(rank=args.process_index)
        if model is not None and folder.is_dir() and not path.exists() and not has_manifest(folder):
            save_regroup_state(model, folder, args.process_index, self.last_regroup_step)

    def _maybe_regroup(self, state: TrainerState, model, optimizer, epoch_end: bool) -> None:
        from badit.regrouping import regroup, regroup_due, regroup_summary

        if not regroup_due(
            self.config, step=state.global_step, total_steps=state.max_steps, epoch_end=epoch_end
        ):
            return
        start = time.perf_counter()
        stats = regroup(model, optimizer)
        seconds = time.perf_counter() - start
        self.last_regroup_step = state.global_step
        record = {
            "step": state.global_step,
            "epoch": state.epoch,
            "seconds": seconds,
            "layers": _jsonable(stats),
        }
        self.history.append(record)
        if self.log_file is not None and state.is_world_process_zero:
            append_line(self.log_file, json.dumps(record))
        summary = {f"regroup/{key}": value for key, value in regroup_summary(stats).items()}
        summary["regroup/seconds"] = seconds
        if self.log_fn is not None:
            self.log_fn(summary)
        else:
            self._pending_logs.update(summary)


# ----------------------------------------------------------------------------------------------
# Progress and logs


class ProgressBar(TrainerCallback):
    """One tqdm bar over optimizer steps with ETA, the last logged loss, the padding fraction and tokens/s
    (main process only)."""

    def __init__(self):
        self.bar: tqdm | None = None
        self.postfix: dict[str, str] = {}
        self.last_tokens, self.last_time = 0, 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.bar = tqdm(
                total=state.max_steps,
                initial=state.global_step,
                desc="train",
                unit="step",
                dynamic_ncols=True,
            )
            self.last_tokens, self.last_time = state.num_input_tokens_seen, time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is None or not logs:
            return
        if "loss" not in logs:  # e.g. a regroup summary
            return
        self.postfix["loss"] = f"{logs['loss']:.4f}"
        if "padding_fraction" in logs:  # of the positions computed so far, the share that was padding
            self.postfix["pad"] = f"{logs['padding_fraction']:.0%}"
        now = time.perf_counter()
        if state.num_input_tokens_seen > self.last_tokens and now > self.last_time:
            # tokens/s since the previous log (all processes together), not the session average
            rate = (state.num_input_tokens_seen - self.last_tokens) / (now - self.last_time)
            self.postfix["tok/s"] = f"{rate:.0f}"
            self.last_tokens, self.last_time = state.num_input_tokens_seen, now
        self.bar.set_postfix(self.postfix, refresh=False)

    def on_train_end(self, args, state, control, **kwargs):
        self.close()

    def close(self) -> None:
        """End the bar's line (also when training stopped with an error, so the message starts a line)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class JsonlLogger(TrainerCallback):
    """Appends every Trainer log record (loss, learning rate, tokens/s, regroup summaries) to a JSONL file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def on_log(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, logs=None, **kwargs
    ):
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step, "epoch": state.epoch, "time": time.time(), **logs}
        append_line(self.path, json.dumps(record))
