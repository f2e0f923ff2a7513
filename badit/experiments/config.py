"""The run configuration: nested dataclasses, read from YAML, overridable field by field.

A run is described by one YAML file whose sections mirror the dataclasses below (``model``,
``data``, ``method``, ``training``, ``evaluation``); every field can be overridden from the command
line with a dotted path, e.g. ``training.learning_rate=1e-4`` or ``data.tasks=[a,b]``.

Defaults follow the paper (arXiv 2605.05676, Sec. 5) and the public BADIT training scripts:
lr 2e-4 with a cosine schedule and 3% warmup, weight decay 0, 10 epochs, r=4, K=6, top_k = K (dense),
alpha 32, dropout 0.05, target gate_proj, max target length 50.

The validation is written by hand (a few dozen lines) rather than with a schema library so that
the messages can name the YAML file, the dotted field and the fix, and so that no dependency is added.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import importlib.util
import math
import os
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union

import yaml

from badit.data.rows import Columns
from badit.errors import BaditError
from badit.experiments.yamlfile import YamlError, load_yaml
from badit.names import CONTINUAL_METHODS, DATA_FORMATS, METHODS, SETTINGS

if TYPE_CHECKING:
    from badit.training.methods import MethodConfig


MAX_SEED = 2**32 - 1
"""The largest seed: Trainer's ``set_seed`` seeds numpy, whose legacy seeding takes 0 .. 2**32 - 1."""


class ConfigError(BaditError, ValueError):
    """A configuration problem, with the field and the fix in the message."""


@dataclass
class ModelConfig:
    name_or_path: str = "smollm2-135m-instruct"
    """A local folder, a Hugging Face hub name, or ``smollm2-135m-instruct`` (embedded default)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """``auto``: bfloat16 on GPUs that support it, float16 on other GPUs, float32 on CPU."""
    trust_remote_code: bool = False
    attn_implementation: str | None = None


@dataclass
class DataConfig:
    path: str = "../shared/data/superni"
    """A SuperNI folder (one sub-folder per task with train/dev/test.json, or raw task files), a
    ``.jsonl`` / ``.csv`` file of own tasks, a folder saved by ``datasets`` or a hub dataset name."""
    format: str = "auto"
    """``auto`` (recognised from ``path``), ``superni``, ``jsonl``, ``csv`` or ``datasets``."""
    task_column: str = Columns.task
    """Own data: the column naming each row's task (without it the file is one task)."""
    prompt_column: str = Columns.prompt
    answer_column: str = Columns.answer
    """Own data: the answer, a string or a list of acceptable answers."""
    messages_column: str = Columns.messages
    """Own data, chat rows: the conversation; its last (assistant) turn is the answer."""
    split_column: str = Columns.split
    """Own data: train / dev / test per row (optional)."""
    split_sizes: dict[str, int | float] | None = None
    """Tasks without a given split (raw SuperNI files, own data without a split column): examples per
    split, counts or fractions, e.g. {test: 20} or {test: 0.2, dev: 0.1}; ``seed`` pins the split
    (default: the run's seed). Defaults: SuperNI {train: 1000, test: 100}, own data 10% test."""
    dev_size: int | float = 0.1
    """Where a task's dev split is missing or shares examples with its test split (the SuperNI continual
    benchmark's dev.json is its test.json), dev is carved from train with a fixed seed, independent of
    the run seed: a fraction of the train examples (at most 100 per task) or a count; 0: never carve."""
    tasks: list[str] | None = None
    """Task names to use (default: every task in ``path``)."""
    task_order: list[str] | None = None
    """Continual setting: the order of the stages (default: sorted names, or shuffled with ``order_seed``)."""
    order_seed: int | None = None
    """Continual setting without ``task_order``: shuffle the sorted task names with this seed."""
    max_source_length: int = 974
    """Prompt tokens kept (truncated from the left of the input); 974 + 50 = the paper's 1024."""
    max_target_length: int = 50
    max_train_examples_per_task: int | None = None
    num_positive_examples: int = 0
    """Positive examples (demonstrations) added to each prompt."""
    use_chat_template: bool = False
    balanced_sampling: bool = False
    """Draw tasks with temperature sampling instead of proportionally to their size."""
    sampling_temperature: float = 1.0
    group_by_length: bool = True
    """Batches of similar lengths (badit.data.LengthGroupedSampler, as transformers' group_by_length; with
    balanced_sampling its draws are grouped): padding costs little. false: plain shuffled batches."""


@dataclass
class TrainingConfig:
    learning_rate: float = 2e-4
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    num_train_epochs: float = 10
    max_steps: int = -1
    """A positive value overrides ``num_train_epochs``."""
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 1.0
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    """``auto``: bf16 (or fp16) on a GPU, none on CPU."""
    gradient_checkpointing: bool = False
    logging_steps: int = 10
    save_steps: int = 500
    save_total_limit: int | None = 2
    dataloader_num_workers: int = 0
    deepspeed: str | None = None
    """A DeepSpeed JSON config (ZeRO stage 0-2) passed to the Trainer."""
    on_nonfinite: Literal["stop", "skip"] = "stop"
    """A NaN/inf loss or gradient: stop with an error naming the step, or skip that optimizer step
    (badit.training.nonfinite; not with DeepSpeed, whose engine applies the step inside backward)."""
    gradient_surgery: Literal["none", "pcgrad"] = "none"
    """``pcgrad``: PCGrad between the tasks of each batch (Yu et al. 2020; one backward pass per task,
    one process, not with DeepSpeed; badit.training.gradient_surgery), with any method; ``setting: multitask``
    only (single and continual train one task at a time: nothing to project)."""
    single_task_steps: Literal["each", "share"] = "each"
    """Setting ``single`` with ``max_steps`` > 0: ``each`` trains every task's adapter ``max_steps`` steps;
    ``share`` gives task t ``max_steps * n_t / N`` steps (n_t its training examples, N all tasks'), the
    passes over its data that a multi-task run of ``max_steps`` makes (``badit sweep``'s interference
    runs). Epoch-based runs (``max_steps`` <= 0) make the same passes either way."""
    report_to: list[str] | None = None
    """Trainer integrations (tensorboard, wandb, mlflow, ... where installed); default: tensorboard when
    installed."""
    trainer_args: dict[str, Any] = field(default_factory=dict)
    """Any other ``transformers.TrainingArguments`` field, written directly under ``training:`` (e.g.
    ``optim: adafactor``); passed to the Trainer as given and checked by TrainingArguments itself
    (see ``badit.training.arguments``). Saved flat in config.yaml."""


@dataclass
class EvaluationConfig:
    split: Literal["test", "dev"] = "test"
    batch_size: int = 16
    max_new_tokens: int = 50
    max_examples_per_task: int | None = None
    """Evaluate the first N test instances of each task (default: all)."""
    stop_at_newline: bool = False
    """Cut each answer at its first newline (besides EOS)."""
    continual_base_scores: bool = True
    """Continual setting: evaluate the untrained adapter too (the baseline of forward transfer)."""


@dataclass
class RunConfig:
    name: str = "run"
    setting: str = "multitask"
    """multitask (all tasks jointly), single (one adapter per task), continual (tasks in order)."""
    output_dir: str = "runs/run"
    seed: int = 42
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    method: MethodConfig = field(default_factory=lambda: _method_config_class()())
    training: TrainingConfig = field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)

    def to_dict(self) -> dict[str, Any]:
        """Nested plain data, as written in YAML (TrainingArguments fields flat under ``training``)."""
        data = dataclasses.asdict(self)
        data["training"].update(data["training"].pop("trainer_args"))
        return data

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False)


# ----------------------------------------------------------------------------------------------
# Building a config from plain data, with type checks


def _method_config_class() -> type:
    """``MethodConfig``, imported only when the method section is built: it takes its defaults from
    ``BaditConfig``, which imports torch and PEFT."""
    from badit.training.methods import MethodConfig

    return MethodConfig


def from_dict(data: dict[str, Any], source: str = "config") -> RunConfig:
    """A validated ``RunConfig`` from nested dicts (as read from YAML); ``source`` names the origin.

    Everything but the method section is built and checked first, without torch (see
    ``_method_config_class``), so that most mistakes are reported at once (issue 17).
    """
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level must be a mapping, got {data!r}")
    method = data.get("method")
    _check_method_name(method, source)
    config = _build(RunConfig, {k: v for k, v in data.items() if k != "method"}, "", source, method=None)
    _check_fields(config, source)
    config.method = _build(_method_config_class(), method, "method.", source)
    _check_method(config, source)
    _check_with_transformers(config, source)
    return config


def load_config(
    path: str | Path, overrides: Sequence[str] | Mapping[str, Any] = (), source: str | None = None
) -> RunConfig:
    """Read a YAML config file and apply overrides: ``section.field=value`` strings (the command line's;
    values parsed as YAML) or a mapping of dotted fields to values (a program's: used as they are).
    ``source`` names the config in errors (default: the file)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = load_yaml(path)
    except YamlError as error:
        raise ConfigError(f"{error} or give another config file") from None
    if data is None:
        raise ConfigError(
            f"{path}: the file is empty; a config sets at least its data (data.path) and method: start from "
            "one in configs/ (e.g. configs/superni_multitask.yaml)"
        )
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (model:, data:, ...)")
    if isinstance(overrides, Mapping):
        for key, value in overrides.items():
            set_field(data, key, value, f"{key}={value!r}")
    else:
        for override in overrides:
            apply_override(data, override)
    return from_dict(data, source=source or str(path))


def apply_override(data: dict[str, Any], override: str) -> None:
    """Set ``a.b.c=value`` in nested dicts; the value is parsed as YAML (``3``, ``true``, ``[a, b]``)."""
    key, sep, raw = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(
            f"override {override!r}: expected section.field=value, e.g. training.learning_rate=1e-4"
        )
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    set_field(data, key.strip(), value, override)


def set_field(data: dict[str, Any], key: str, value: Any, override: str) -> None:
    """Set the dotted field ``key`` (``a.b.c``) of nested dicts to ``value``; ``override`` names it in errors."""
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def _type_hints(cls: type, method_class: type | None = None) -> dict[str, Any]:
    """The field types of a config dataclass; RunConfig's ``method`` is ``method_class`` (None: not
    needed, so ``MethodConfig`` is not imported)."""
    return typing.get_type_hints(cls, localns={"MethodConfig": method_class or object})


def _section_fields() -> dict[str, list[str]]:
    """{section: its field names} of every section of RunConfig."""
    hints = _type_hints(RunConfig, _method_config_class())
    return {
        f.name: [g.name for g in dataclasses.fields(hints[f.name])]
        for f in dataclasses.fields(RunConfig)
        if dataclasses.is_dataclass(hints[f.name])
    }


def _trainer_argument_types() -> dict[str, Any]:
    from badit.training.arguments import MANAGED, argument_types  # imports transformers: only when needed

    return {name: kind for name, kind in argument_types().items() if name not in MANAGED}


def _suggestion(prefix: str, key: str, names: list[str], more: tuple[str, ...] = ()) -> str:
    """The hint for an unknown field: a close name here (among `names` and `more`), the same name in
    another section (a flat ``learning_rate=...`` means ``training.learning_rate``), or the valid names."""
    close = difflib.get_close_matches(key, [*names, *more], n=1)
    if close:
        return f"did you mean '{prefix}{close[0]}'?"
    sections = _section_fields()
    sections["training"] = sections["training"] + [n for n in _trainer_argument_types() if n not in names]
    candidates = {f"{section}.{name}": name for section, fields in sections.items() for name in fields}
    candidates = {full: name for full, name in candidates.items() if not full.startswith(prefix or "\0")}
    exact = [full for full, name in candidates.items() if name == key]
    close = exact or [
        full
        for full, name in candidates.items()
        if name in difflib.get_close_matches(key, candidates.values(), n=1)
    ]
    if close:
        return f"did you mean '{close[0]}'?"
    tail = ", or any transformers.TrainingArguments field" if more else ""
    return f"the valid fields are {', '.join(names)}{tail}"


def _build(cls: type, data: Any, prefix: str, source: str, **fixed: Any) -> Any:
    """``cls`` from the mapping ``data`` (``fixed``: fields given as they are, not read from ``data``)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'top level'} must be a mapping, got {data!r}")
    hints = _type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [key for key in data if key not in names]
    passthrough, more = {}, ()
    if cls is TrainingConfig and unknown:  # any other TrainingArguments field
        types_ = _trainer_argument_types()
        passthrough = {key: data[key] for key in unknown if key in types_}
        unknown = [key for key in unknown if key not in types_]
        more = tuple(name for name in types_ if name not in names)
    if unknown:
        key = str(unknown[0])
        if cls is TrainingConfig:
            from badit.training.arguments import MANAGED

            if key in MANAGED:
                raise ConfigError(f"{source}: training.{key} is set by badit: {MANAGED[key]}")
        hint = _suggestion(prefix, key, [n for n in names if n != "trainer_args"], more)
        raise ConfigError(f"{source}: unknown field '{prefix}{key}'; {hint}")
    kwargs = {}
    for name, value in data.items():
        if name in passthrough:
            continue
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            kwargs[name] = _build(kind, value, f"{prefix}{name}.", source)
        else:
            kwargs[name] = _coerce(value, kind, f"{prefix}{name}", source)
    if passthrough:
        types_ = _trainer_argument_types()
        coerced = {
            key: _coerce(value, types_[key], f"{prefix}{key}", source) for key, value in passthrough.items()
        }
        kwargs["trainer_args"] = {**kwargs.get("trainer_args", {}), **coerced}
    return cls(**kwargs, **fixed)


YAML_BOOLEAN_WORDS = {False: ("no", "off", "false"), True: ("yes", "on", "true")}
"""The words YAML 1.1 (PyYAML) turns into booleans, by the boolean: a choice field takes its word back."""


def _zero_stage(path: str) -> int | None:
    """The ZeRO stage a DeepSpeed JSON config sets (None when it sets none or cannot be read: DeepSpeed
    reports that itself)."""
    import json

    try:
        stage = json.loads(Path(path).read_text(encoding="utf-8")).get("zero_optimization", {}).get("stage")
    except (OSError, ValueError, AttributeError):
        return None
    return stage if isinstance(stage, int) else None


def _coerce(value: Any, kind: Any, name: str, source: str) -> Any:
    """``value`` converted to ``kind`` where that is lossless (``"2e-4"`` -> 0.0002, 3 -> 3.0), else an error.
    Enumerations (TrainingArguments' ``optim`` ...) keep the value, checked against their members."""
    if kind is Any:
        return value
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        # A value that already has one of the types is kept as it is (`all-linear` stays a string).
        if any(
            isinstance(value, o) and not (o is int and isinstance(value, bool))
            for o in options
            if isinstance(o, type)
        ):
            return value
        for option in options:
            try:
                return _coerce(value, option, name, source)
            except ConfigError:
                pass
        raise ConfigError(f"{source}: {name} must be {_describe(kind)}, got {value!r}")
    if isinstance(value, bool) and (
        origin is Literal or (isinstance(kind, type) and issubclass(kind, enum.Enum))
    ):
        # YAML 1.1 reads `no` / `off` as false and `yes` / `on` as true: `save_strategy: no` means "no"
        choices = args if origin is Literal else tuple(member.value for member in kind)
        value = next((word for word in YAML_BOOLEAN_WORDS[value] if word in choices), value)
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{source}: {name} must be one of {', '.join(map(str, args))}, got {value!r}")
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {name} must be a mapping, got {value!r}")
        return {str(k): _coerce(v, args[1], f"{name}.{k}", source) for k, v in value.items()}
    if origin is list:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]  # a single item where a list is expected: `tasks: task1` means [task1]
        if not isinstance(value, list):
            raise ConfigError(f"{source}: {name} must be a list, got {value!r}")
        return [_coerce(item, args[0], f"{name}[{i}]", source) for i, item in enumerate(value)]
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:  # YAML 1.1 reads `2e-4` (no dot) as a string
                return float(value)
            except ValueError:
                pass
    elif kind is str:
        if isinstance(value, str):
            return value
    elif isinstance(kind, type) and issubclass(kind, enum.Enum):
        if value in {member.value for member in kind}:
            return value
    elif isinstance(kind, type) and isinstance(value, kind):
        return value
    raise ConfigError(f"{source}: {name} must be {_describe(kind)}, got {value!r}")


def _describe(kind: Any) -> str:
    origin = typing.get_origin(kind)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(kind))
    if origin is dict:
        return f"a mapping to {_describe(typing.get_args(kind)[1])}"
    if origin is list:
        return f"a list of {_describe(typing.get_args(kind)[0])}"
    if kind is type(None):
        return "null"
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return "one of " + ", ".join(str(member.value) for member in kind)
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(kind, str(kind))


# ----------------------------------------------------------------------------------------------
# Checks across fields


def validate(config: RunConfig, source: str = "config") -> None:
    """Raise ``ConfigError`` for values that are well-typed but unusable together."""
    _check_method_name(dataclasses.asdict(config.method), source)
    _check_fields(config, source)
    _check_method(config, source)
    _check_with_transformers(config, source)


def _fail(source: str, message: str) -> None:
    raise ConfigError(f"{source}: {message}")


def _check_method_name(method: Any, source: str) -> None:
    """``method.name`` among METHODS (checked on the raw section, before anything imports torch)."""
    name = method.get("name") if isinstance(method, dict) else None
    if isinstance(name, str) and name not in METHODS:
        close = difflib.get_close_matches(name, METHODS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        _fail(source, f"method.name {name!r} is unknown{hint}; use one of {', '.join(METHODS)}")


def _check_fields(config: RunConfig, source: str) -> None:
    """The checks of every field but the method section's; none imports torch."""

    def fail(message: str) -> None:
        _fail(source, message)

    t = config.training
    if not 0 <= config.seed <= MAX_SEED:
        fail(f"seed must be an integer from 0 to 2**32 - 1 = {MAX_SEED} (numpy's range), got {config.seed}")
    if config.data.tasks is not None and not config.data.tasks:
        fail("data.tasks is an empty list; name the tasks to train on, or remove it (null) for every task")
    data = config.to_dict()
    data.pop("method")
    for name, value in _numbers(data):
        if not math.isfinite(value):  # YAML reads .nan and .inf as floats: they would train NaN adapters
            fail(f"{name} must be a finite number, got {value}")
    if config.setting not in SETTINGS:
        fail(f"setting {config.setting!r} is unknown; use one of {', '.join(SETTINGS)}")
    if t.learning_rate <= 0:
        fail(f"training.learning_rate must be positive, got {t.learning_rate}")
    if not 0.0 <= t.warmup_ratio < 1.0:
        fail(f"training.warmup_ratio must be in [0, 1), got {t.warmup_ratio}")
    if t.gradient_surgery != "none" and t.deepspeed:
        fail(
            f"training.gradient_surgery={t.gradient_surgery} does not work with training.deepspeed (set one of them)"
        )
    if t.gradient_surgery != "none" and config.setting != "multitask":
        fail(
            f"training.gradient_surgery={t.gradient_surgery} projects the gradients of the tasks in each batch; "
            f"setting {config.setting} trains one task at a time (use setting: multitask or gradient_surgery: none)"
        )
    if t.on_nonfinite == "skip" and t.deepspeed:
        fail("training.on_nonfinite=skip does not work with training.deepspeed (use stop)")
    if t.deepspeed is not None:
        if not Path(t.deepspeed).is_file():
            fail(f"training.deepspeed {t.deepspeed}: no such file; give a DeepSpeed JSON config (or null)")
        if _zero_stage(t.deepspeed) == 3:
            fail(
                f"training.deepspeed {t.deepspeed}: ZeRO stage 3 shards the adapter's parameters, which BADIT's "
                "regrouping permutes and adapter saving reads whole (a LoRA adapter was written with an empty "
                "lora_B): use ZeRO stage 2 (configs/ds_zero2.json) or plain data parallel (torchrun)"
            )
        if importlib.util.find_spec("deepspeed") is None:
            fail("training.deepspeed needs the deepspeed package: pip install deepspeed (or set it to null)")
    fsdp = t.trainer_args.get("fsdp")
    if fsdp not in (None, "", False, []) or os.environ.get("ACCELERATE_USE_FSDP", "").lower() in (
        "1",
        "true",
    ):
        fail(
            "FSDP (training.fsdp, or accelerate launch --use_fsdp) is not supported: it shards the adapter's "
            "parameters, so BADIT's regrouping moves nothing (it trains as svd-moe) and the adapters of every "
            "method are saved wrong or fail after training; on a CPU it is silently not used at all. Use data "
            "parallel (torchrun / accelerate launch --multi_gpu) or DeepSpeed ZeRO-2 (training.deepspeed)"
        )
    if t.max_steps == 0 or t.max_steps < -1:  # Trainer reads any value <= 0 as "train by epochs"
        fail(
            f"training.max_steps must be a positive number of steps, or -1 to train num_train_epochs; got {t.max_steps}"
        )
    if t.max_steps <= 0 and t.num_train_epochs <= 0:
        fail("set training.num_train_epochs > 0 or training.max_steps > 0")
    for name in ("per_device_train_batch_size", "gradient_accumulation_steps", "logging_steps", "save_steps"):
        if getattr(t, name) < 1:
            fail(f"training.{name} must be at least 1, got {getattr(t, name)}")
    for name, limit in (
        ("data.max_train_examples_per_task", config.data.max_train_examples_per_task),
        ("evaluation.max_examples_per_task", config.evaluation.max_examples_per_task),
    ):
        if limit is not None and limit < 1:
            fail(f"{name} must be at least 1, or null for every example, got {limit}")
    if config.data.max_target_length < 1 or config.data.max_source_length < 1:
        fail("data.max_source_length and data.max_target_length must be at least 1")
    if config.data.sampling_temperature <= 0:
        fail(f"data.sampling_temperature must be positive, got {config.data.sampling_temperature}")
    if config.evaluation.batch_size < 1 or config.evaluation.max_new_tokens < 1:
        fail("evaluation.batch_size and evaluation.max_new_tokens must be at least 1")
    sizes = config.data.split_sizes or {}
    unknown = sorted(set(sizes) - {"train", "dev", "test", "seed"})
    if unknown:
        fail(f"data.split_sizes: unknown key(s) {', '.join(unknown)}; use train, dev, test, seed")
    for key, value in sizes.items():
        if value < 0 or (key in ("train", "seed") and not isinstance(value, int)):
            kind = "a count" if key != "seed" else "an integer"
            fail(f"data.split_sizes.{key} must be {kind} >= 0, got {value}")
        if isinstance(value, float) and value >= 1 and not value.is_integer():
            fail(
                f"data.split_sizes.{key}: give a count (e.g. 20) or a fraction below 1 (e.g. 0.1), got {value}"
            )
    dev_size = config.data.dev_size
    if isinstance(dev_size, bool) or not isinstance(dev_size, (int, float)) or dev_size < 0:
        fail(f"data.dev_size must be a fraction in (0, 1), a count, or 0 (never carve dev), got {dev_size!r}")
    if isinstance(dev_size, float) and dev_size >= 1 and not dev_size.is_integer():
        fail(f"data.dev_size: give a count (e.g. 50) or a fraction below 1 (e.g. 0.1), got {dev_size}")
    if config.data.format not in DATA_FORMATS:
        fail(f"data.format {config.data.format!r} is unknown; use one of {', '.join(DATA_FORMATS)}")
    if config.data.task_order is not None and config.data.tasks is not None:
        missing = sorted(set(config.data.task_order) - set(config.data.tasks))
        if missing:
            fail(f"data.task_order names tasks that are not in data.tasks: {', '.join(missing)}")


def _check_method(config: RunConfig, source: str) -> None:
    """The method section: finite numbers, then the fields where their defaults live (BaditConfig)."""
    for name, value in _numbers(dataclasses.asdict(config.method), "method"):
        if not math.isfinite(value):
            _fail(source, f"{name} must be a finite number, got {value}")
    m = config.method
    if m.name in CONTINUAL_METHODS and config.setting != "continual":
        _fail(
            source,
            f"method.name {m.name} is a continual method (one branch per task in order); use setting: continual",
        )
    t = config.training
    if m.name in CONTINUAL_METHODS and t.deepspeed and (m.name == "gainlora" or t.weight_decay > 0):
        # the frozen branches are put back, and GainLoRA's gate step projected, on the model's parameters
        # after the optimizer step; DeepSpeed's partitioned fp32 copies would not see either
        what = "method.name=gainlora" if m.name == "gainlora" else f"{m.name} with training.weight_decay > 0"
        _fail(
            source, f"{what} does not work with training.deepspeed (set deepspeed: null or weight_decay: 0)"
        )
    from badit.training.methods import check_method  # imports PEFT and torch

    try:
        check_method(config.method)
    except ValueError as error:
        _fail(source, str(error).replace("BaditConfig.", "method."))


def _check_with_transformers(config: RunConfig, source: str) -> None:
    """The checks that need transformers: TrainingArguments fields, integrations, the schedule."""

    def fail(message: str) -> None:
        _fail(source, message)

    t = config.training
    if t.trainer_args:
        from badit.training.arguments import ArgumentError, check_arguments

        try:
            check_arguments(t.trainer_args)
        except ArgumentError as error:
            fail(f"training.{error.field} {error}" if error.field else f"training: {error}")
    if t.report_to:
        from badit.training.arguments import ArgumentError, check_reporting

        try:
            check_reporting(t.report_to)
        except ArgumentError as error:
            fail(f"training.report_to: {error}")
    schedulers = _scheduler_types()
    if t.lr_scheduler_type not in schedulers:
        close = difflib.get_close_matches(t.lr_scheduler_type, schedulers, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        fail(
            f"training.lr_scheduler_type {t.lr_scheduler_type!r} is unknown; {hint}"
            f"use one of {', '.join(schedulers)}"
        )


def _numbers(data: Any, prefix: str = "") -> list[tuple[str, float]]:
    """(dotted name, value) of every float in nested config data (lists and mappings included)."""
    if isinstance(data, float):
        return [(prefix, data)]
    if isinstance(data, dict):
        items = data.items()
    elif isinstance(data, list):
        items = ((f"[{i}]", v) for i, v in enumerate(data))
    else:
        return []
    out = []
    for key, value in items:
        name = f"{prefix}{key}" if str(key).startswith("[") or not prefix else f"{prefix}.{key}"
        out += _numbers(value, name)
    return out


def _scheduler_types() -> list[str]:
    """The learning-rate schedules transformers' Trainer knows (``lr_scheduler_type``)."""
    from transformers.trainer_utils import SchedulerType  # imports torch: only when a config is checked

    return [member.value for member in SchedulerType]
