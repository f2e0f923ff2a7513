"""The step every setting is made of: train one adapter on some tasks, then evaluate it.

`RunContext` carries what all stages of a run share (config, folder, task ids, resume, callbacks,
the process's role); `run_stage` trains a stage, evaluates it on the main process and marks it done,
or skips it when a resumed run already finished it. The settings (``badit.experiments.settings``)
are short functions over these two.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import NoMatchingPeftModuleError
from transformers import TrainerCallback, TrainingArguments

from badit.adapter import uses_task_routing
from badit.data import Columns, DataCollator, PromptTemplate, Task, TaskSource, open_source, tokenize_tasks
from badit.data.sources import CarvedDevSource
from badit.evaluation import evaluate
from badit.experiments.config import ConfigError, DataConfig, RunConfig, TrainingConfig
from badit.experiments.folder import RunFolder, StageFolder
from badit.names import METRICS
from badit.training.continual import ContinualCallback, build_continual_model, is_continual
from badit.training.methods import build_peft_config
from badit.training.model_loading import load_model_and_tokenizer
from badit.training.trainer import StageResult, build_adapter_model, resolve_mixed_precision, train_stage


@dataclass(frozen=True)
class RunContext:
    """What every stage of one run shares."""

    config: RunConfig
    run: RunFolder
    task_ids: dict[str, int]
    """Task name -> id, over all the run's tasks (the same ids in every stage)."""
    resume: bool = False
    extra_callbacks: tuple[TrainerCallback, ...] = ()
    is_main: bool = True
    """Whether this process evaluates and writes results (the main process under a launcher)."""

    @property
    def run_dir(self) -> Path:
        return self.run.path

    @classmethod
    def create(
        cls,
        config: RunConfig,
        task_names: Sequence[str],
        is_main: bool,
        resume: bool = False,
        extra_callbacks: Sequence[TrainerCallback] = (),
    ) -> RunContext:
        return cls(
            config=config,
            run=RunFolder(config.output_dir),
            task_ids={name: i for i, name in enumerate(task_names)},  # as run_task_ids
            resume=resume,
            extra_callbacks=tuple(extra_callbacks),
            is_main=is_main,
        )


# ----------------------------------------------------------------------------------------------
# From the run config to the library's objects


def prompt_template(data: DataConfig) -> PromptTemplate:
    return PromptTemplate(
        num_pos_examples=data.num_positive_examples, use_chat_template=data.use_chat_template
    )


def load_base_model(config: RunConfig):
    """The run's base model and tokenizer."""
    m = config.model
    try:
        return load_model_and_tokenizer(m.name_or_path, m.dtype, m.trust_remote_code, m.attn_implementation)
    except ImportError as error:  # e.g. attn_implementation=flash_attention_2 without its package
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        other = " or change model.attn_implementation (sdpa, eager)" if m.attn_implementation else ""
        raise ConfigError(
            f"model {m.name_or_path}: a package it needs is missing ({first}); install it{other}"
        ) from None


def data_source(config: RunConfig) -> TaskSource:
    """The run's tasks: ``data.path`` in ``data.format`` with the configured columns; tasks without a
    given split are split with ``data.split_sizes`` (seed: the run's unless the sizes name one); a dev
    split that is missing or shares examples with test is carved from train (``data.dev_size``)."""
    d = config.data
    columns = Columns(
        task=d.task_column,
        prompt=d.prompt_column,
        answer=d.answer_column,
        messages=d.messages_column,
        split=d.split_column,
    )
    source = open_source(d.path, d.format, columns, {"seed": config.seed, **(d.split_sizes or {})})
    return CarvedDevSource(source, d.dev_size) if d.dev_size else source


def task_names(config: RunConfig, source: TaskSource | None = None) -> list[str]:
    if config.data.tasks:
        return sorted(config.data.tasks)
    return (source or data_source(config)).task_names()


def _subsample(task: Task, limit: int | None, seed: int | None) -> Task:
    """At most ``limit`` instances: a seeded sample in file order (``seed``), or the first ones (None)."""
    if limit is None or len(task.instances) <= limit:
        return task
    if seed is None:
        keep = range(limit)
    else:
        keep = sorted(random.Random(f"{seed}-{task.name}").sample(range(len(task.instances)), limit))
    return dataclasses.replace(task, instances=[task.instances[i] for i in keep])


def task_examples(config: RunConfig, tokenizer, task: Task) -> list[dict]:
    """``task``'s instances tokenised with the run's prompt template and lengths (labels -100 on the
    prompt): what analysis and routing averages feed the model, one task at a time."""
    return tokenize_tasks(
        tokenizer,
        [task],
        prompt_template(config.data),
        max_source_length=config.data.max_source_length,
        max_target_length=config.data.max_target_length,
    )


def load_run_tasks(
    config: RunConfig, names: Sequence[str], source: TaskSource | None = None
) -> tuple[list[Task], list[Task]]:
    """(training tasks, evaluation tasks) with the configured caps on examples per task."""
    source = source or data_source(config)
    train = source.load("train", list(names))
    test = source.load(config.evaluation.split, list(names))
    train = [_subsample(t, config.data.max_train_examples_per_task, config.seed) for t in train]
    test = [_subsample(t, config.evaluation.max_examples_per_task, None) for t in test]
    return train, test


def training_arguments(training: TrainingConfig, seed: int, checkpoint_dir: Path) -> TrainingArguments:
    """The Trainer's arguments for the ``training:`` section."""
    t = training
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
    defaults = dict(
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
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=t.dataloader_num_workers,
        deepspeed=t.deepspeed,
        report_to=report_to,
        remove_unused_columns=False,  # keep task_ids for the sampler (removed in compute_loss)
        include_num_input_tokens_seen="non_padding",
        ddp_find_unused_parameters=False,
        disable_tqdm=False,
    )
    # Any other TrainingArguments field from `training:` (checked when the config was read) wins.
    return TrainingArguments(**{**defaults, **t.trainer_args})


def adapter_model(config: RunConfig, init_adapter: Path | None = None, num_tasks: int | None = None):
    """(model with the run's adapter, tokenizer): fresh, or continued from a saved adapter folder;
    ``num_tasks``: the run's task ids (oracle routing, ``method.routing: task``)."""
    base, tokenizer = load_base_model(config)
    if init_adapter is None and not is_continual(config.method):
        check_rank_fits(config, base)
    try:
        if is_continual(config.method):  # one more LoRA branch than the previous stage's adapter
            return build_continual_model(base, config.method, config.seed, init_adapter), tokenizer
        peft_config = None if init_adapter is not None else build_peft_config(config.method, num_tasks)
        return build_adapter_model(base, peft_config, config.seed, init_adapter), tokenizer
    except NoMatchingPeftModuleError:
        raise ConfigError(
            f"method.target_modules {config.method.target_modules!r} matches no layer of "
            f"{config.model.name_or_path}; its linear layers end in {', '.join(linear_layer_names(base))} "
            "(or use 'all-linear')"
        ) from None


def check_rank_fits(config: RunConfig, base) -> None:
    """A ``ConfigError`` when the adapter's ``num_experts * r`` components (the LoRA baselines' rank; hydralora:
    its shared A's ``r``) exceed
    ``min(in, out)`` of a layer it targets: BADIT's SVD experts cannot be built there, and a LoRA update of
    that layer has rank at most ``min(in, out)`` anyway (a huge rank would only fill the memory).
    Checked before the adapter is built; the targeted layers are found by PEFT's own matching."""
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists

    m = config.method
    rank = m.r if m.name == "hydralora" else m.num_experts * m.r  # hydralora: one shared A of rank r
    what = (
        f"method.r = {m.r}"
        if m.name == "hydralora"
        else f"method.num_experts * method.r = {m.num_experts} * {m.r} = {rank}"
    )
    targets = linear_layer_names(base) if m.target_modules == "all-linear" else m.target_modules
    matcher = LoraConfig(target_modules=targets)
    for name, module in base.named_modules():
        dims = _in_out(module)
        if dims is None or not check_target_module_exists(matcher, name):
            continue
        if rank > min(dims):
            raise ConfigError(
                f"{what} adapter components do not fit layer {name} ({dims[0]} in, {dims[1]} out): at most min(in, out) = {min(dims)}; lower "
                "method.r or method.num_experts (or leave that layer out of method.target_modules)"
            )


def _in_out(module) -> tuple[int, int] | None:
    """(in, out) features of a linear layer: ``torch.nn.Linear`` and its quantized subclasses, or
    transformers' ``Conv1D`` (GPT-2: ``nx`` in, ``nf`` out); None for other modules."""
    if isinstance(getattr(module, "in_features", None), int) and isinstance(
        getattr(module, "out_features", None), int
    ):
        return module.in_features, module.out_features
    if type(module).__name__ == "Conv1D" and hasattr(module, "nx") and hasattr(module, "nf"):
        return module.nx, module.nf
    return None


def linear_layer_names(model) -> list[str]:
    """The distinct last names of the layers BADIT and LoRA adapt: ``torch.nn.Linear`` and transformers'
    ``Conv1D`` (GPT-2's projections); what target_modules matches."""
    from transformers.pytorch_utils import Conv1D

    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, (torch.nn.Linear, Conv1D))
    }
    return sorted(names - {"lm_head"})


def train(ctx: RunContext, model, tokenizer, tasks: Sequence[Task], stage: StageFolder) -> StageResult:
    """Train ``model`` on ``tasks`` as the run config says; the adapter goes to ``stage.adapter``."""
    config = ctx.config
    examples = tokenize_tasks(
        tokenizer,
        tasks,
        prompt_template(config.data),
        max_source_length=config.data.max_source_length,
        max_target_length=config.data.max_target_length,
        seed=config.seed,
        task_ids=ctx.task_ids,
    )
    if not examples:
        raise ValueError(f"no training examples in tasks {[t.name for t in tasks]}")
    report_to = config.training.report_to
    callbacks = ctx.extra_callbacks
    if is_continual(config.method):
        collator = DataCollator(pad_token_id=tokenizer.pad_token_id)
        batch = config.training.per_device_train_batch_size
        callbacks = (*callbacks, ContinualCallback(model, config.method, examples, collator, batch))
    return train_stage(
        model,
        tokenizer,
        examples,
        stage.training_paths(),
        training_arguments(config.training, config.seed, stage.checkpoints),
        balanced_sampling=config.data.balanced_sampling,
        sampling_temperature=config.data.sampling_temperature,
        group_by_length=config.data.group_by_length,
        tensorboard=report_to is None or "tensorboard" in report_to,
        resume=ctx.resume,
        extra_callbacks=callbacks,
        router_lr_multiplier=config.method.router_lr_multiplier,
        on_nonfinite=config.training.on_nonfinite,
        gradient_surgery=config.training.gradient_surgery,
    )


def evaluate_model(config: RunConfig, model, tokenizer, tasks: Sequence[Task], stage: StageFolder) -> dict:
    """Greedy evaluation of ``model`` on ``tasks``; writes the stage's predictions and metrics."""
    if torch.cuda.is_available() and model.device.type != "cuda":
        model.to("cuda")
    return evaluate(
        model,
        tokenizer,
        tasks,
        stage.predictions_file,
        stage.metrics_file,
        template=prompt_template(config.data),
        max_source_length=config.data.max_source_length,
        max_new_tokens=config.evaluation.max_new_tokens,
        batch_size=config.evaluation.batch_size,
        stop_at_newline=config.evaluation.stop_at_newline,
        task_ids=run_task_ids(config) if uses_task_routing(model) else None,
    )


def score_scalars(metrics: dict, split: str) -> dict[str, float]:
    """The scores of a metrics.json as scalar tags: ``{split}/{metric}/{task}`` and ``{split}/{metric}/average``."""
    scalars = {}
    for metric in METRICS:
        for task, scores in sorted(metrics["tasks"].items()):
            scalars[f"{split}/{metric}/{task}"] = float(scores[metric])
        scalars[f"{split}/{metric}/average"] = float(metrics["average"][metric])
    return scalars


def log_scores(config: RunConfig, stage: StageFolder, metrics: dict, step: int) -> None:
    """The stage's final scores, where the training curves are: its TensorBoard folder (when TensorBoard
    logging is on and installed) and the active wandb run (when ``report_to`` names wandb), at the stage's
    last step, tagged ``{split}/{metric}/{task}``; metrics.json stays the record."""
    scalars = score_scalars(metrics, config.evaluation.split)
    report_to = config.training.report_to
    if report_to is None or "tensorboard" in report_to:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard not installed: the training logs say so already
            SummaryWriter = None
        if SummaryWriter is not None:
            writer = SummaryWriter(str(stage.training_paths().tensorboard))
            for tag, value in scalars.items():
                writer.add_scalar(tag, value, step)
            writer.close()
    if report_to is not None and "wandb" in report_to:
        import wandb

        if wandb.run is not None:
            wandb.log(scalars)  # wandb's own step: the Trainer has advanced it past `step`
            wandb.run.summary.update(scalars)


def run_task_ids(config: RunConfig) -> dict[str, int]:
    """Task name -> id as the run trained with it (`RunContext.task_ids`): the position among all its tasks."""
    return {name: i for i, name in enumerate(task_names(config))}


STAGE_POLL_SECONDS = 2.0
"""How often a non-main process looks for the stage's done.json (a file, not a collective: rank 0's
evaluation of a stage may outlast any collective's timeout, NCCL's 10 minutes included)."""


def wait_for_stage(stage: StageFolder) -> None:
    """Block until rank 0 has finished ``stage`` (adapter saved, evaluated: its done.json exists). The
    processes of a continual run then start the next stage, which loads this adapter, together."""
    while not stage.done_file.is_file():
        time.sleep(STAGE_POLL_SECONDS)


def peak_memory_mb() -> float:
    """Peak GPU memory allocated by this process (CUDA), else its peak resident memory (CPU), in MiB."""
    if torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB


def folder_bytes(folder: Path) -> int:
    """Total size of the files in ``folder`` (the saved adapter: weights, config, tokenizer)."""
    folder = Path(folder)
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


def _stage_info(result: StageResult, eval_seconds: float) -> dict:
    losses = [r["loss"] for r in result.log_history if "loss" in r]
    tokens = max((r.get("num_input_tokens_seen", 0) for r in result.log_history), default=0)
    padded = max((r.get("padded_tokens", 0) for r in result.log_history), default=0)
    return {
        "train_seconds": round(result.seconds, 2),
        "tokens_seen": int(tokens),  # real (attended) tokens
        "padded_tokens": int(padded),  # positions computed: batch x padded length, summed
        "tokens_per_second": round(tokens / result.seconds, 2) if tokens and result.seconds > 0 else None,
        "peak_memory_mb": peak_memory_mb(),
        "adapter_bytes": folder_bytes(result.adapter_dir),
        "eval_seconds": round(eval_seconds, 2),
        "global_step": result.global_step,
        "processes": result.processes,
        "train_loss": result.train_loss,
        "train_parts": result.parts,
        "first_logged_loss": losses[0] if losses else None,
        "last_logged_loss": losses[-1] if losses else None,
    }


def run_stage(
    ctx: RunContext,
    train_tasks: Sequence[Task],
    eval_tasks: Sequence[Task],
    stage: StageFolder,
    init_adapter: Path | None = None,
    mark_done: bool = True,
) -> dict | None:
    """Train an adapter (fresh, or from ``init_adapter``) on ``train_tasks`` into ``stage``, evaluate
    it on ``eval_tasks`` there (predictions.jsonl, metrics.json) and, with ``mark_done``, mark the stage
    done so that a resumed run skips it (the multitask setting's one stage is never skipped: a resume
    continues from its last checkpoint and evaluates again, with the evaluation settings given then).

    Returns the stage's record (timings, steps, losses); None on the other processes of a distributed
    launch, which only train.
    """
    done = stage.done() if ctx.resume and mark_done else None
    if done is not None:
        return done
    model, tokenizer = adapter_model(ctx.config, init_adapter, len(ctx.task_ids))
    result = train(ctx, model, tokenizer, train_tasks, stage)
    if not ctx.is_main:
        if mark_done:  # the next stage may load this one's adapter: wait until rank 0 has written it all
            wait_for_stage(stage)
        return None
    start = time.perf_counter()
    metrics = evaluate_model(ctx.config, model, tokenizer, eval_tasks, stage)
    done = _stage_info(result, time.perf_counter() - start)
    log_scores(ctx.config, stage, metrics, result.global_step)
    if mark_done:
        stage.mark_done(done)
    return done
