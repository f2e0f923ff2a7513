"""One training stage: tokenised tasks -> an adapter, through ``transformers.Trainer``.

Trainer is used (rather than a hand-written loop) so that ``accelerate launch``, ``torchrun`` and
DeepSpeed ZeRO-2 run exactly this code, and so that checkpoints hold the adapter, optimizer,
scheduler and RNG states; the regroup callback adds the gradient windows.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import PeftModel, get_peft_model
from transformers import PreTrainedModel, Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_callback import ProgressCallback
from transformers.trainer_utils import get_last_checkpoint

from badit.data import DataCollator, PromptTemplate, Task, TaskBalancedSampler, tokenize_tasks
from badit.training.callbacks import JsonlLogger, ProgressBar, RegroupCallback
from badit.training.config import RunConfig
from badit.training.methods import build_peft_config, uses_regrouping
from badit.training.router_logging import ROUTER_LOG_FILE, RouterHealthCallback

logger = logging.getLogger(__name__)


class BaditTrainer(Trainer):
    """``Trainer`` that accepts the data collator's ``task_ids`` and can sample tasks with a temperature.

    ``task_ids`` identify each example's task for the sampler and for analysis; the model does not
    take them (BADIT routes from the prompt), so they are removed before the forward pass.
    """

    def __init__(self, *args, balanced_sampling: bool = False, sampling_temperature: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.balanced_sampling = balanced_sampling
        self.sampling_temperature = sampling_temperature
        self._queued_logs: dict[str, float] = {}

    def queue_logs(self, values: dict[str, float]) -> None:
        """Values to add to the next log record (calling ``log`` from a callback would cancel the
        Trainer's pending loss log of that step)."""
        self._queued_logs.update(values)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._queued_logs:
            logs = {**logs, **self._queued_logs}
            self._queued_logs = {}
        super().log(logs, start_time)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = {key: value for key, value in inputs.items() if key != "task_ids"}
        return super().compute_loss(
            model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )

    def _get_train_sampler(self, train_dataset=None):
        if not self.balanced_sampling:
            return super()._get_train_sampler(train_dataset)
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        task_ids = [example["task_id"] for example in dataset]
        return TaskBalancedSampler(task_ids, self.sampling_temperature, seed=self.args.seed)


def resolve_mixed_precision(setting: str) -> str:
    """``auto``: bf16 on a GPU that supports it, fp16 on other GPUs, none on CPU."""
    if setting != "auto":
        if setting != "no" and not torch.cuda.is_available():
            raise ValueError(f"training.mixed_precision={setting} needs a CUDA GPU; use auto or no on CPU")
        return setting
    if not torch.cuda.is_available():
        return "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def prompt_template(config: RunConfig) -> PromptTemplate:
    return PromptTemplate(
        num_pos_examples=config.data.num_positive_examples, use_chat_template=config.data.use_chat_template
    )


def build_adapter_model(
    config: RunConfig, base_model: PreTrainedModel, init_adapter: str | Path | None = None
):
    """The base model with the method's adapter: fresh (seeded), or continued from a saved adapter.

    Trainable parameters are kept in float32 whatever the base dtype, so that mixed precision keeps
    fp32 master weights for the adapter (as PEFT's ``autocast_adapter_dtype`` does for LoRA).
    """
    set_seed(config.seed)
    if init_adapter is not None:
        model = PeftModel.from_pretrained(base_model, str(init_adapter), is_trainable=True)
    else:
        model = get_peft_model(base_model, build_peft_config(config.method))
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()
    if uses_regrouping(config.method):
        from badit.regrouping import attach_gradient_tracking

        attach_gradient_tracking(model)  # idempotent: the adapter may have attached it already
    return model


def training_arguments(config: RunConfig, checkpoint_dir: Path) -> TrainingArguments:
    t = config.training
    precision = resolve_mixed_precision(t.mixed_precision)
    report_to = [r for r in (t.report_to or []) if r != "tensorboard"] or "none"
    if t.gradient_checkpointing:  # named activation_checkpointing since transformers 5.x
        fields = TrainingArguments.__dataclass_fields__
        extra = {
            "activation_checkpointing"
            if "activation_checkpointing" in fields
            else "gradient_checkpointing": True
        }
    else:
        extra = {}
    return TrainingArguments(
        **extra,
        output_dir=str(checkpoint_dir),
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler_type,
        warmup_steps=t.warmup_ratio,  # a value below 1 is a fraction of the training steps
        weight_decay=t.weight_decay,
        num_train_epochs=t.num_train_epochs,
        max_steps=t.max_steps,
        per_device_train_batch_size=t.per_device_train_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        max_grad_norm=t.max_grad_norm,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not torch.cuda.is_available(),
        logging_steps=t.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        seed=config.seed,
        data_seed=config.seed,
        dataloader_num_workers=t.dataloader_num_workers,
        deepspeed=t.deepspeed,
        report_to=report_to,
        remove_unused_columns=False,  # keep task_ids for the sampler (removed in compute_loss)
        include_num_input_tokens_seen="non_padding",
        ddp_find_unused_parameters=False,
        disable_tqdm=False,
    )


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
    """Write the adapter (with router and initial factors) and tokenizer; a crash leaves no half folder."""
    staging = adapter_dir.with_name(f".{adapter_dir.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(str(staging))
    tokenizer.save_pretrained(str(staging))
    shutil.rmtree(adapter_dir, ignore_errors=True)
    os.replace(staging, adapter_dir)


@dataclass
class StageResult:
    adapter_dir: Path
    global_step: int
    train_loss: float | None
    seconds: float
    log_history: list[dict] = field(default_factory=list)


def train_stage(
    config: RunConfig,
    model,
    tokenizer,
    tasks: Sequence[Task],
    stage_dir: str | Path,
    task_ids: dict[str, int] | None = None,
    resume: bool = False,
    extra_callbacks: Sequence[TrainerCallback] = (),
) -> StageResult:
    """Train ``model`` (a PEFT model) on ``tasks`` and save the adapter to ``stage_dir/adapter``.

    ``stage_dir`` receives ``checkpoints/`` and ``logs/`` (train_log.jsonl, regroup.jsonl,
    router_health.jsonl, tensorboard/). With ``resume``, training continues from the last checkpoint there, if any.
    """
    stage_dir = Path(stage_dir)
    checkpoint_dir, log_dir = stage_dir / "checkpoints", stage_dir / "logs"
    examples = tokenize_tasks(
        tokenizer,
        tasks,
        prompt_template(config),
        max_source_length=config.data.max_source_length,
        max_target_length=config.data.max_target_length,
        seed=config.seed,
        task_ids=task_ids,
    )
    if not examples:
        raise ValueError(f"no training examples in tasks {[t.name for t in tasks]}")
    args = training_arguments(config, checkpoint_dir)
    trainer = BaditTrainer(
        model=model,
        args=args,
        train_dataset=examples,
        data_collator=DataCollator(pad_token_id=tokenizer.pad_token_id),
        processing_class=tokenizer,
        balanced_sampling=config.data.balanced_sampling,
        sampling_temperature=config.data.sampling_temperature,
    )
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(ProgressBar())
    trainer.add_callback(JsonlLogger(log_dir / "train_log.jsonl"))
    if config.training.report_to is None or "tensorboard" in config.training.report_to:
        tensorboard = _tensorboard_callback(log_dir / "tensorboard")
        if tensorboard is not None:
            trainer.add_callback(tensorboard)
    regroup = None
    if uses_regrouping(config.method):
        regroup = RegroupCallback(
            schedule=model.peft_config[model.active_adapter],
            log_file=log_dir / "regroup.jsonl",
            log_fn=trainer.queue_logs,
        )
        trainer.add_callback(regroup)
    # a no-op on models without a router (LoRA...): it finds no routing weights
    trainer.add_callback(RouterHealthCallback(log_dir / ROUTER_LOG_FILE, log_fn=trainer.queue_logs))
    for callback in extra_callbacks:
        trainer.add_callback(callback)

    checkpoint = get_last_checkpoint(str(checkpoint_dir)) if resume and checkpoint_dir.is_dir() else None
    if resume and checkpoint is None:
        logger.info("no checkpoint in %s: training from the start", checkpoint_dir)
    if regroup is not None:
        regroup.resume_from = checkpoint
    start = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=checkpoint)
    seconds = time.perf_counter() - start

    adapter_dir = stage_dir / "adapter"
    if trainer.args.should_save:
        save_adapter(model, tokenizer, adapter_dir)
    return StageResult(
        adapter_dir=adapter_dir,
        global_step=output.global_step,
        train_loss=output.training_loss,
        seconds=seconds,
        log_history=list(trainer.state.log_history),
    )
