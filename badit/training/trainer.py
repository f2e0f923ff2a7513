"""One training stage: tokenised tasks -> an adapter, through ``transformers.Trainer``.

Trainer is used (rather than a hand-written loop) so that ``accelerate launch``, ``torchrun`` and
DeepSpeed ZeRO-2 run exactly this code, and so that checkpoints hold the adapter, optimizer,
scheduler and RNG states; the regroup callback adds the gradient windows.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from peft import PeftConfig, PeftModel, get_peft_model
from peft.utils import CONFIG_NAME as PEFT_CONFIG_NAME
from transformers import PreTrainedModel, Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_callback import ProgressCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from badit.adapter import BaditConfig, routing_tasks, uses_task_routing
from badit.adapter.integrity import check_adapter_folder
from badit.data import IGNORE_INDEX, DataCollator, LengthGroupedSampler, TaskBalancedSampler
from badit.data.files import atomic_write_json
from badit.names import GRADIENT_SURGERIES as SURGERIES
from badit.regrouping import attach_gradient_tracking
from badit.training.callbacks import JsonlLogger, ProgressBar, RegroupCallback
from badit.training.checkpoints import (
    STAGING_DIR,
    CheckpointError,
    kill_point,
    remove_staging,
    resumable_checkpoint,
    seal,
    staged_write,
)
from badit.training.gradient_surgery import TaskGradients
from badit.training.loss import labelled_positions, lm_head_on, trainer_loss
from badit.training.model_loading import gpu_half_dtype
from badit.training.nonfinite import NonFiniteGuard, check_final_parameters
from badit.training.replicas import check_replicas, world_size
from badit.training.router_logging import RouterHealthCallback

logger = logging.getLogger(__name__)

RUN_TOTALS_FILE = "run_totals.json"
"""In each checkpoint: the training totals of the run up to that step (`RunTotals`)."""


@dataclass(frozen=True)
class RunTotals:
    """What a stage's training cost and achieved over all its parts (a run killed and resumed trains in
    several ``Trainer.train`` calls; Trainer's own ``train_loss`` and runtime cover only the last one).

    ``loss_sum`` is the sum of the optimizer steps' losses as Trainer sums them for ``train_loss``, over
    the ``steps`` steps counted (all of them unless the run was resumed from a checkpoint of an older
    badit, which holds no totals: then only the steps trained since); ``seconds``: time inside
    ``Trainer.train``, over the ``parts`` calls that trained a step (and the setup of those that did not:
    a finished run resumed to re-evaluate it).
    """

    loss_sum: float = 0.0
    steps: int = 0
    seconds: float = 0.0
    parts: int = 0

    @property
    def train_loss(self) -> float | None:
        return self.loss_sum / self.steps if self.steps else None

    @classmethod
    def read(cls, checkpoint: str | os.PathLike | None) -> RunTotals:
        """The totals saved in ``checkpoint`` (zero for a fresh start or an older badit's checkpoint)."""
        path = Path(checkpoint) / RUN_TOTALS_FILE if checkpoint else None
        if path is None or not path.is_file():
            return cls()
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls(**{key: data[key] for key in ("loss_sum", "steps", "seconds", "parts")})

    def plus(self, loss_sum: float, steps: int, seconds: float) -> RunTotals:
        """These totals and one more part (counted in ``parts`` when it trained a step)."""
        parts = self.parts + (steps > 0)
        return RunTotals(self.loss_sum + loss_sum, self.steps + steps, self.seconds + seconds, parts)


class BaditTrainer(Trainer):
    """``Trainer`` that accepts the data collator's ``task_ids``, can sample tasks with a temperature and
    groups batches by length (``group_by_length``, badit.data.LengthGroupedSampler).

    ``task_ids`` identify each example's task for the sampler and for analysis; the model does not
    take them (BADIT routes from the prompt), so they are removed before the forward pass (oracle
    routing, ``routing="task"``, reads them through ``badit.routing_tasks``).
    ``nonfinite_guard`` sees every backward pass (badit.training.nonfinite). ``gradient_surgery``
    ``pcgrad``: one backward pass per task in the batch and PCGrad's combination of their gradients
    (badit.training.gradient_surgery; one process only).
    With ``labelled_logits_only`` (the default) the LM head and the loss see only the positions whose
    next token is labelled (badit.training.loss), the same loss as the full logits' within float rounding.
    """

    def __init__(
        self,
        *args,
        balanced_sampling: bool = False,
        sampling_temperature: float = 1.0,
        group_by_length: bool = True,
        router_lr_multiplier: float = 1.0,
        nonfinite_guard: NonFiniteGuard | None = None,
        gradient_surgery: str = "none",
        labelled_logits_only: bool = True,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.labelled_logits_only = labelled_logits_only and self.compute_loss_func is None
        if self.labelled_logits_only:
            # the Trainer then pops the labels, calls the model without them and passes the outputs
            # here, with its own num_items_in_batch and gradient-accumulation scaling, as for a model loss
            self.compute_loss_func = trainer_loss
        if gradient_surgery not in SURGERIES:
            raise ValueError(
                f"gradient_surgery must be one of {', '.join(SURGERIES)}, got {gradient_surgery!r}"
            )
        if gradient_surgery != "none" and (self.args.world_size > 1 or self.is_deepspeed_enabled):
            raise ValueError(
                f"training.gradient_surgery={gradient_surgery} runs in one process without DeepSpeed "
                "(per-task gradients are not all-reduced); launch without torchrun/accelerate or set it to none"
            )
        self.gradient_surgery = gradient_surgery
        self._task_gradients: TaskGradients | None = None
        self._routes_by_task: bool | None = None  # whether the model routes by task id (routing="task")
        self.balanced_sampling = balanced_sampling
        self.sampling_temperature = sampling_temperature
        self.group_by_length = group_by_length
        self.router_lr_multiplier = router_lr_multiplier
        self.nonfinite_guard = nonfinite_guard
        self._queued_logs: dict[str, float] = {}
        self.padded_tokens = 0
        """Positions computed (batch x padded length, summed over micro-batches and processes); the
        Trainer's ``num_input_tokens_seen`` counts the real (attended) tokens."""
        self._before = RunTotals()  # the totals of the parts trained before this train() call
        self._train_start = time.perf_counter()
        self.run_totals = RunTotals()
        """The whole stage's totals, set when ``train`` returns."""

    def train(self, resume_from_checkpoint: str | None = None, **kwargs):
        """Trainer's ``train``; then ``run_totals`` holds the totals over every part of the run."""
        self._before = RunTotals.read(resume_from_checkpoint)
        self._train_start = time.perf_counter()
        output = super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
        self.run_totals = self._totals_now(finished=True)
        return output

    def _totals_now(self, finished: bool = False) -> RunTotals:
        """The totals up to the current step: the earlier parts' plus this call's. Trainer keeps the loss
        sum of the logged windows in ``_total_loss_scalar`` and of the window not logged yet in ``_tr_loss``,
        and adds the latter to the former when training ends (``finished``)."""
        pending = 0.0 if finished else self._tr_loss.item()
        steps = self.state.global_step - self._initial_global_step
        return self._before.plus(
            self._total_loss_scalar + pending, steps, time.perf_counter() - self._train_start
        )

    def _run_epoch(self, *args, **kwargs):
        """Trainer's epoch, except when resumed at (or after) ``max_steps``: Trainer checks ``max_steps``
        only after a step, so a run resumed from its last checkpoint (killed during the final save or the
        evaluation, or a finished run resumed to re-evaluate it) would train one step too many whenever
        ``max_steps`` is not a multiple of the epoch length. Then no step is made; the epoch end that the
        uninterrupted run reached after its last checkpoint (and its callbacks: an epoch-end regroup) runs."""
        if self.state.global_step >= self.state.max_steps:
            self.control.should_training_stop = True
            self.control = self.callback_handler.on_epoch_end(self.args, self.state, self.control)
            return None
        return super()._run_epoch(*args, **kwargs)

    def queue_logs(self, values: dict[str, float]) -> None:
        """Values to add to the next log record (calling ``log`` from a callback would cancel the
        Trainer's pending loss log of that step)."""
        self._queued_logs.update(values)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._queued_logs:
            logs = {**logs, **self._queued_logs}
            self._queued_logs = {}
        if self.padded_tokens:
            logs["padded_tokens"] = self.padded_tokens
            logs["padding_fraction"] = round(1 - self.state.num_input_tokens_seen / self.padded_tokens, 4)
        super().log(logs, start_time)

    def create_optimizer(self, model=None):
        created = self.optimizer is None
        optimizer = super().create_optimizer(model)
        if created and self.router_lr_multiplier != 1.0:
            scale_router_lr(optimizer, self.model if model is None else model, self.router_lr_multiplier)
        return optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        task_ids = inputs.get("task_ids")
        inputs = {key: value for key, value in inputs.items() if key != "task_ids"}
        unwrapped = self.accelerator.unwrap_model(model)
        if self._routes_by_task is None:  # looked up once, not by a walk over the modules every step
            self._routes_by_task = uses_task_routing(unwrapped)
        # oracle routing (routing="task") reads each sequence's task
        with routing_tasks(unwrapped, task_ids) if self._routes_by_task else nullcontext():
            output = self._task_loss(model, inputs, return_outputs, num_items_in_batch)
        terms = [c.loss_term(model) for c in self.callback_handler.callbacks if hasattr(c, "loss_term")]
        terms = [term for term in terms if term is not None]
        if not terms or not model.training:
            return output
        # A callback's loss term (O-LoRA's penalty) counts once per optimizer step: each micro-batch adds
        # 1/accumulation of it when Trainer does not divide this loss by the accumulation steps itself.
        scaled = getattr(self, "loss_is_scaled_for_ga", None)
        if scaled is None:
            scaled = (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or (
                self.compute_loss_func is not None
            )
        share = 1 / self.current_gradient_accumulation_steps if scaled else 1.0
        extra = sum(terms)
        self.queue_logs({"loss_term": float(extra.detach())})
        if return_outputs:
            return output[0] + share * extra, output[1]
        return output + share * extra

    def _task_loss(self, model, inputs, return_outputs, num_items_in_batch):
        labels = inputs.get("labels")
        if not self.labelled_logits_only or labels is None or return_outputs:
            return super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )
        unwrapped = self.accelerator.unwrap_model(model)
        if routes_from_labels(unwrapped):  # the model gets no labels: give BADIT's routers their prompt
            inputs["prompt_mask"] = labels == IGNORE_INDEX
        with lm_head_on(unwrapped, labelled_positions(labels)):
            return super().compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)

    def training_step(self, model, inputs, num_items_in_batch=None):
        positions = torch.as_tensor(inputs["input_ids"].numel(), device=self.args.device, dtype=torch.int64)
        self.padded_tokens += int(self.accelerator.gather(positions).sum().item())
        if self.gradient_surgery == "pcgrad":
            loss = self._pcgrad_step(model, inputs, num_items_in_batch)
        else:
            loss = super().training_step(model, inputs, num_items_in_batch)
        if self.nonfinite_guard is not None:  # the step being made is global_step + 1
            sync = self.accelerator.sync_gradients
            self.nonfinite_guard.check(model, loss, self.state.global_step + 1, sync_step=sync)
        return loss

    def _pcgrad_step(self, model, inputs, num_items_in_batch=None) -> torch.Tensor:
        """Trainer's training step with one backward pass per task of the batch, on that task's rows;
        at the last micro-batch of an optimizer step the gathered per-task gradients become PCGrad's
        combination in ``.grad`` (badit.training.gradient_surgery). Each task's loss is its share of the
        ordinary batch loss (its label tokens over the batch's), so the returned loss and the sum of the
        task gradients are the ordinary ones. The pair order is seeded by (seed, step): a resumed run
        projects as the uninterrupted one does."""
        model.train()
        if hasattr(self.optimizer, "train") and callable(self.optimizer.train):
            self.optimizer.train()
        inputs = self._prepare_inputs(inputs)
        task_ids = inputs.get("task_ids")
        if task_ids is None or "labels" not in inputs:
            raise ValueError(
                "training.gradient_surgery=pcgrad needs each example's task and labels in the batch"
            )
        if self._task_gradients is None:
            self._task_gradients = TaskGradients([p for p in model.parameters() if p.requires_grad])
        gathered = self._task_gradients
        if not gathered.by_task:  # the first micro-batch of an optimizer step
            for p in gathered.params:
                p.grad = None
        tokens = (inputs["labels"][:, 1:] != IGNORE_INDEX).sum(dim=1)  # as the shifted causal-LM loss counts
        by_sum = self.model_accepts_loss_kwargs  # the model divides its token sum by num_items_in_batch
        denominator = num_items_in_batch if num_items_in_batch is not None else tokens.sum()
        steps = getattr(self, "current_gradient_accumulation_steps", self.args.gradient_accumulation_steps)
        accumulation = 1 if by_sum and num_items_in_batch is not None else steps
        total = torch.zeros((), device=task_ids.device)
        for task in task_ids.unique().tolist():
            rows = task_ids == task
            if int(tokens[rows].sum()) == 0:
                continue  # no label token: no loss, no gradient
            part = {
                key: value[rows]
                if torch.is_tensor(value) and value.dim() and len(value) == len(rows)
                else value
                for key, value in inputs.items()
            }
            with self.compute_loss_context_manager():
                if by_sum:
                    loss = self.compute_loss(model, part, num_items_in_batch=denominator)
                else:  # a mean over the part's tokens, weighted to its share of the batch's
                    loss = self.compute_loss(model, part) * tokens[rows].sum() / denominator
            loss = loss / accumulation
            self.accelerator.backward(loss)
            gathered.add_from_grad(task)
            total = total + loss.detach().to(total.device)
        if self.accelerator.sync_gradients:
            gathered.write_surgery(random.Random(f"pcgrad-{self.args.seed}-{self.state.global_step}"))
        return total

    # ------------------------------------------------------------------ crash-safe checkpoints

    _staging = False  # while True, Trainer's writes go to the staging folder (see _save_checkpoint)

    def _get_output_dir(self, trial) -> str:
        run_dir = super()._get_output_dir(trial)
        return os.path.join(run_dir, STAGING_DIR) if self._staging else run_dir

    def _save_checkpoint(self, model, trial) -> None:
        """Trainer's checkpoint, written into ``.staging/checkpoint-N``, completed with the callbacks'
        state (the regroup state), sealed by a manifest and renamed to ``checkpoint-N`` (checkpoints.py).

        Trainer writes every file under `_get_output_dir`; pointing it at the staging folder for the
        duration keeps all of Trainer's write paths (DeepSpeed, FSDP, scaler, RNG) instead of copying
        them here. Trainer's own rotation then only sees the staging folder, so save_total_limit is
        applied here, on the real folder, by step number (a rename may change a folder's mtime).
        """
        step = self.state.global_step
        run_dir = Path(super()._get_output_dir(trial))
        name = f"{PREFIX_CHECKPOINT_DIR}-{step}"
        staging = run_dir / STAGING_DIR / name
        with staged_write(staging, fresh=self.args.world_size <= 1):
            self._staging = True
            try:
                super()._save_checkpoint(model, trial)
            finally:
                self._staging = False
            kill_point("after-trainer-state", step)
            if self.args.should_save:
                atomic_write_json(staging / PADDED_TOKENS_FILE, {"padded_tokens": self.padded_tokens})
                atomic_write_json(staging / RUN_TOTALS_FILE, asdict(self._totals_now()))
            for callback in self.callback_handler.callbacks:
                if hasattr(callback, "save_checkpoint_state"):
                    callback.save_checkpoint_state(staging, self.args, self.state, self.model)
            self.accelerator.wait_for_everyone()  # every process's files are in before the seal
            if self.args.should_save:
                seal(staging, run_dir / name, before_rename=lambda: kill_point("before-rename", step))
        if self.args.should_save:
            rotate_checkpoints(
                output_dir=str(run_dir),
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=False,
            )

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        kill_point("checkpoint-write", self.state.global_step)  # the adapter is written, the optimizer not
        super()._save_optimizer_and_scheduler(output_dir)

    def _get_train_sampler(self, train_dataset=None):
        """Task-balanced draws (``balanced_sampling``) and/or length-grouped batches (``group_by_length``,
        unless ``train_sampling_strategy`` names another of the Trainer's samplers); else the Trainer's."""
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        base = None
        if self.balanced_sampling:
            task_ids = [example["task_id"] for example in dataset]
            base = TaskBalancedSampler(task_ids, self.sampling_temperature, seed=self.args.seed)
        if not self.group_by_length or self.args.train_sampling_strategy != "random":
            return base if base is not None else super()._get_train_sampler(train_dataset)
        lengths = [len(example["input_ids"]) for example in dataset]
        # one group = one optimizer step's examples over all processes (the sharded loader hands each
        # process its consecutive slice), so N processes x batch b see the batches of 1 process x N*b
        group = self.args.train_batch_size * self.args.gradient_accumulation_steps * self.args.world_size
        return LengthGroupedSampler(lengths, group, seed=self.args.seed, base=base)


PADDED_TOKENS_FILE = "padded_tokens.json"
"""In a checkpoint: ``BaditTrainer.padded_tokens`` at that step, read back on resume."""


def padded_tokens_at(checkpoint: str | Path | None) -> int:
    """The padded-token count saved in ``checkpoint`` (0 without one, or for older checkpoints)."""
    path = Path(checkpoint) / PADDED_TOKENS_FILE if checkpoint else None
    if path is None or not path.is_file():
        return 0
    return int(json.loads(path.read_text(encoding="utf-8"))["padded_tokens"])


def routes_from_labels(model: torch.nn.Module) -> bool:
    """Whether ``model``'s adapter routes on the prompt tokens it finds from the labels (BADIT's
    routing state, badit.adapter.routing), which then need ``prompt_mask`` when no labels are passed."""
    if getattr(model, "continual_gates", None) is not None:  # GainLoRA's gates pool the prompt too
        return True
    return getattr(getattr(model, "base_model", None), "routing_state", None) is not None


def scale_router_lr(optimizer: torch.optim.Optimizer, model: torch.nn.Module, multiplier: float) -> int:
    """Move the routers' parameters of each param group into a copy of that group whose ``lr`` is
    ``multiplier`` times larger (before the scheduler is built, which then scales both alike).
    Returns the number of router tensors moved."""
    routers = {
        id(p)
        for name, p in model.named_parameters()
        if any(f".{kind}." in name for kind in ("badit_router", "badit_task_logits", "hydra_router"))
        and p.requires_grad  # BADIT (its router or oracle routing), HydraLoRA
    }
    moved = 0
    for group in list(optimizer.param_groups):
        own = [p for p in group["params"] if id(p) in routers]
        if not own:
            continue
        group["params"] = [p for p in group["params"] if id(p) not in routers]
        optimizer.add_param_group({**group, "params": own, "lr": group["lr"] * multiplier})
        moved += len(own)
    optimizer.param_groups[:] = [g for g in optimizer.param_groups if g["params"]]
    return moved


def resolve_mixed_precision(setting: str) -> str:
    """``auto``: bf16 or fp16 on a GPU as ``gpu_half_dtype`` says, none on CPU."""
    if setting != "auto":
        if setting != "no" and not torch.cuda.is_available():
            raise ValueError(f"training.mixed_precision={setting} needs a CUDA GPU; use auto or no on CPU")
        return setting
    return {torch.bfloat16: "bf16", torch.float16: "fp16", None: "no"}[gpu_half_dtype()]


def regroup_config(model) -> BaditConfig | None:
    """The active adapter's BaditConfig when it regroups (the schedule of the regroup callback), else None."""
    config = model.peft_config[model.active_adapter]
    return config if isinstance(config, BaditConfig) and config.regroup else None


def build_adapter_model(
    base_model: PreTrainedModel,
    peft_config: PeftConfig | None,
    seed: int,
    init_adapter: str | Path | None = None,
):
    """The base model with an adapter: fresh from ``peft_config`` (seeded), or continued from a saved
    adapter folder ``init_adapter`` (then ``peft_config`` is not used).

    Trainable parameters are kept in float32 whatever the base dtype, so that mixed precision keeps
    fp32 master weights for the adapter (as PEFT's ``autocast_adapter_dtype`` does for LoRA).
    """
    set_seed(seed)
    if init_adapter is not None:
        check_adapter_folder(init_adapter)
        model = PeftModel.from_pretrained(base_model, str(init_adapter), is_trainable=True)
    elif peft_config is not None:
        model = get_peft_model(base_model, peft_config)
    else:
        raise ValueError("build_adapter_model needs a peft_config or an init_adapter folder")
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()
    if regroup_config(model) is not None:
        attach_gradient_tracking(model)  # idempotent; a loaded adapter became trainable after it was built
    return model


def _tensorboard_callback(log_dir: Path) -> TrainerCallback | None:
    try:
        from transformers.integrations import TensorBoardCallback

        callback = TensorBoardCallback()
    except (ImportError, RuntimeError):
        logger.info("tensorboard is not installed: no TensorBoard logs (the JSONL log is still written)")
        return None
    callback.logging_dir = str(log_dir)
    return callback


def save_adapter(model, tokenizer, adapter_dir: Path) -> None:
    """Write the adapter (with router and initial factors), tokenizer and manifest; a crash leaves no half
    folder (staged and renamed as checkpoints are), a full disk is `DiskFullError`."""
    staging = adapter_dir.with_name(f".{adapter_dir.name}.tmp")
    with staged_write(staging):
        model.save_pretrained(str(staging))
        tokenizer.save_pretrained(str(staging))
        continual_state = getattr(model, "continual_state", None)  # badit.training.continual
        if continual_state is not None:
            continual_state.save(staging)
        kill_point("final-save")
        seal(staging, adapter_dir)


@dataclass(frozen=True)
class StagePaths:
    """Where one stage writes (given by the run folder, ``badit.experiments.folder.StageFolder``)."""

    folder: Path
    """The stage folder (named in messages)."""
    adapter: Path
    train_log: Path
    regroup_log: Path
    router_log: Path
    tensorboard: Path


@dataclass
class StageResult:
    adapter_dir: Path
    global_step: int
    train_loss: float | None
    """Mean loss over the stage's optimizer steps, all parts of a resumed run together (`RunTotals`)."""
    seconds: float
    """Time spent training, summed over the parts of a resumed run."""
    log_history: list[dict] = field(default_factory=list)
    processes: int = 1
    """Data-parallel processes that trained it (all checked to hold the same adapter)."""
    parts: int = 1
    """``Trainer.train`` calls that trained a step of it (1, plus one per resume that trained)."""


def train_stage(
    model,
    tokenizer,
    examples: Sequence[dict],
    paths: StagePaths,
    args: TrainingArguments,
    *,
    balanced_sampling: bool = False,
    sampling_temperature: float = 1.0,
    group_by_length: bool = True,
    tensorboard: bool = True,
    resume: bool = False,
    extra_callbacks: Sequence[TrainerCallback] = (),
    router_lr_multiplier: float = 1.0,
    on_nonfinite: str = "stop",
    gradient_surgery: str = "none",
) -> StageResult:
    """Train ``model`` (a PEFT model) on tokenised ``examples`` and save the adapter to ``paths.adapter``.

    Checkpoints go to ``args.output_dir``; the logs to ``paths`` (Trainer records, regroups, router
    health, tensorboard/ when ``tensorboard``). A model whose adapter
    regroups gets the regroup callback, scheduled by its BaditConfig. With ``resume``, training
    continues from the newest checkpoint that verifies (`resumable_checkpoint`), if any. ``on_nonfinite``
    (stop | skip): what a NaN/inf loss or gradient does (badit.training.nonfinite); ``stop`` raises
    ``NonFiniteError`` and writes no adapter. ``gradient_surgery``: ``none`` or ``pcgrad`` (BaditTrainer).
    """
    stage_dir, checkpoint_dir = paths.folder, Path(args.output_dir)
    if not examples:
        raise ValueError(f"no training examples for {stage_dir}")
    trainer = BaditTrainer(
        model=model,
        args=args,
        train_dataset=examples,
        data_collator=DataCollator(pad_token_id=tokenizer.pad_token_id),
        processing_class=tokenizer,
        balanced_sampling=balanced_sampling,
        sampling_temperature=sampling_temperature,
        group_by_length=group_by_length,
        router_lr_multiplier=router_lr_multiplier,
        gradient_surgery=gradient_surgery,
    )
    trainer.nonfinite_guard = NonFiniteGuard(
        on_nonfinite, where=str(stage_dir), log_fn=trainer.queue_logs, loss_scaling=args.fp16
    )
    trainer.remove_callback(ProgressCallback)
    progress = ProgressBar()
    trainer.add_callback(progress)
    trainer.add_callback(JsonlLogger(paths.train_log))
    if tensorboard:
        tensorboard_callback = _tensorboard_callback(paths.tensorboard)
        if tensorboard_callback is not None:
            trainer.add_callback(tensorboard_callback)
    regroup = None
    schedule = regroup_config(model)
    if schedule is not None:
        regroup = RegroupCallback(schedule, log_file=paths.regroup_log, log_fn=trainer.queue_logs)
        trainer.add_callback(regroup)
    # a no-op on models without a router (LoRA...): it finds no routing weights
    trainer.add_callback(RouterHealthCallback(paths.router_log, log_fn=trainer.queue_logs))
    for callback in extra_callbacks:
        trainer.add_callback(callback)

    if trainer.is_world_process_zero():
        remove_staging(checkpoint_dir)
    checkpoint = None
    if resume:
        checkpoint = resumable_checkpoint(checkpoint_dir, needs_optimizer=not args.save_only_model)
        if checkpoint is not None:
            logger.info("resuming from %s", checkpoint)
            checkpoint = str(checkpoint)
    if resume and checkpoint is None:
        if (paths.adapter / PEFT_CONFIG_NAME).is_file():
            # the adapter is written only once training has finished: training again would redo it
            raise CheckpointError(
                f"{paths.adapter} is a trained adapter and {checkpoint_dir} holds no checkpoint to "
                f"resume from: training is complete; re-evaluate with `badit eval`, or train it again with "
                "--overwrite"
            )
        logger.info("no checkpoint in %s: training from the start", checkpoint_dir)
    if regroup is not None:
        regroup.resume_from = checkpoint
    for callback in extra_callbacks:  # e.g. GainLoRA's gate, kept in the checkpoint by its callback
        if hasattr(callback, "resume_from"):
            callback.resume_from = checkpoint
    trainer.padded_tokens = padded_tokens_at(checkpoint)
    try:
        output = trainer.train(resume_from_checkpoint=checkpoint)
    finally:
        progress.close()
    totals = trainer.run_totals
    check_replicas(model, str(stage_dir))  # under DDP: every rank holds rank 0's adapter, or an error
    check_final_parameters(model, str(stage_dir), output.global_step)  # a NaN adapter is never written

    adapter_dir = paths.adapter
    if trainer.args.should_save:
        save_adapter(model, tokenizer, adapter_dir)
    return StageResult(
        adapter_dir=adapter_dir,
        global_step=output.global_step,
        train_loss=totals.train_loss,
        seconds=totals.seconds,
        parts=totals.parts,
        log_history=list(trainer.state.log_history),
        processes=world_size(),
    )
