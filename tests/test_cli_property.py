"""Property-based: random configs, overrides and task files through the CLI entry point in-process end in
success or in badit's own error (exit 2, one line, no traceback); nothing else (issue 13).

No model is trained: the Trainer is replaced by a stub that stops the command where training would start, so
each example checks everything before (config, data, run folder, tiny model and adapter, tokenisation,
TrainingArguments).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from pathlib import Path
from unittest import mock

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from badit.cli.main import main
from tests.helpers import save_tiny_model, tiny_run_config

FIELDS = [
    "name",
    "setting",
    "seed",
    "output_dir",
    "model.dtype",
    "data.format",
    "data.tasks",
    "data.task_order",
    "data.split_sizes",
    "data.max_source_length",
    "data.max_target_length",
    "data.max_train_examples_per_task",
    "data.num_positive_examples",
    "data.sampling_temperature",
    "data.task_column",
    "method.name",
    "method.r",
    "method.num_experts",
    "method.top_k",
    "method.lora_alpha",
    "method.target_modules",
    "training.learning_rate",
    "training.lr_scheduler_type",
    "training.warmup_ratio",
    "training.num_train_epochs",
    "training.max_steps",
    "training.per_device_train_batch_size",
    "training.save_steps",
    "training.report_to",
    "training.optim",
    "training.adam_beta1",
    "evaluation.split",
    "evaluation.batch_size",
    "evaluation.max_examples_per_task",
    "evaluation.max_new_tokens",
]
VALUES = st.one_of(
    st.sampled_from(
        [".nan", ".inf", "-.inf", "-1", "0", "1", "3", "0.5", "1e-4", "2e-4", "1e400", "null", "true", "''"]
        + ["[a, b]", "[]", "{x: 1}", "{test: 2}", "abc", "[", "{", ": x", "- a", "demo_copy_words", "cosine"]
        + ["badit", "lora", "single", "continual", "dev", "jsonl", "superni", "all-linear", "[gate_proj]"]
    ),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12),
)
KEYS = st.sampled_from(FIELDS + ["made_up", "training.made_up", "trainingg.max_steps", "data.path.x"])
OVERRIDES = st.lists(st.tuples(KEYS, VALUES).map(lambda kv: f"{kv[0]}={kv[1]}"), max_size=4)

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20).filter(str.strip)


@st.composite
def mostly_valid(draw, valid, broken):
    """A list of ``valid`` items with, in about half of the draws, one ``broken`` item put in somewhere:
    files that are right or have one problem, as real ones do."""
    items = draw(st.lists(valid, min_size=2, max_size=10))
    if draw(st.booleans()):
        items.insert(draw(st.integers(0, len(items))), draw(broken))
    return items


def _row(task, prompt, completion):
    return {"task": task, "prompt": prompt, "completion": completion}


VALID_ROW = st.builds(_row, st.sampled_from(["a", "b"]), TEXT, TEXT | st.lists(TEXT, min_size=1, max_size=2))
BROKEN_ROW = st.one_of(
    st.builds(_row, st.sampled_from(["../x", "", "a/b"]) | JSON, TEXT, TEXT),
    st.builds(_row, st.sampled_from(["a"]), JSON, JSON),
    st.builds(
        lambda row, split: {**row, "split": split},
        VALID_ROW,
        st.sampled_from(["train", "test", "nope"]) | JSON,
    ),
    JSON,
)
JSONL = st.one_of(
    mostly_valid(VALID_ROW, BROKEN_ROW).map(lambda rows: "".join(json.dumps(r) + "\n" for r in rows)),
    st.text(max_size=60),
)
VALID_INSTANCE = st.builds(
    lambda x, y: {"input": x, "output": y}, TEXT, st.lists(TEXT, min_size=1, max_size=2)
)
BROKEN_INSTANCE = st.one_of(
    st.builds(lambda x, y: {"input": x, "output": y}, JSON, JSON),
    st.builds(
        lambda i, k: {key: v for key, v in i.items() if key != k},
        VALID_INSTANCE,
        st.sampled_from(["input", "output"]),
    ),
    st.builds(lambda i, x: {**i, "id": x}, VALID_INSTANCE, JSON),
    JSON,
)


@st.composite
def superni_file(draw):
    task = {
        "Definition": [draw(TEXT)],
        "Positive Examples": draw(st.lists(VALID_INSTANCE, max_size=2)),
        "Instances": draw(mostly_valid(VALID_INSTANCE, BROKEN_INSTANCE)),
    }
    if draw(st.integers(0, 3)) == 0:  # one top-level field missing or of the wrong kind
        key = draw(st.sampled_from(sorted(task)))
        if draw(st.booleans()):
            del task[key]
        else:
            task[key] = draw(JSON)
    return json.dumps(task)


SUPERNI = st.one_of(superni_file(), superni_file(), superni_file(), st.text(max_size=30))

SETTINGS = settings(
    max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


@contextlib.contextmanager
def _chdir(folder: Path):  # contextlib.chdir is Python 3.11+
    before = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


class ReachedTraining(Exception):
    """Raised where the Trainer would start (or the continual setting's first evaluation)."""


def _reached(*args, **kwargs):
    raise ReachedTraining


def _run(argv: list[str], cwd: Path) -> tuple[int, str]:
    """(exit code, stderr) of the CLI in this process, run in ``cwd`` (relative output_dir values land
    there). Everything before training runs (config, data, run folder, model and adapter, tokenisation,
    TrainingArguments); reaching the Trainer counts as success (exit 0)."""
    err, out = io.StringIO(), io.StringIO()
    work = cwd / "cwd"
    work.mkdir(exist_ok=True)
    with (
        mock.patch("badit.experiments.stage.train_stage", _reached),
        mock.patch("badit.experiments.settings.evaluate_model", _reached),
        _chdir(work),
        contextlib.redirect_stderr(err),
        contextlib.redirect_stdout(out),
    ):
        try:
            code = main(argv)
        except ReachedTraining:
            code = 0
    return code, err.getvalue()


def _assert_clean(code: int, err: str, command: str, ok: tuple[int, ...] = (0,)) -> None:
    if code in ok:
        return
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith(f"badit {command}: error: "), err
    assert "Traceback" not in err


_MODEL = tempfile.TemporaryDirectory(prefix="badit-property-model-")  # one tiny model for every example


def _config(root: Path) -> dict:
    """The tiny run config under ``root`` (its own data and output folder, the shared tiny model)."""
    model = Path(_MODEL.name) / "model"
    if not model.is_dir():
        save_tiny_model(model)
    (root / "model").symlink_to(model)
    return tiny_run_config(root)


@SETTINGS
@given(overrides=OVERRIDES)
def test_random_overrides(overrides):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        path = root / "config.yaml"
        path.write_text(yaml.safe_dump(_config(root)))
        _assert_clean(*_run(["train", str(path), *overrides], root), "train")


SECTIONS = st.fixed_dictionaries(
    {},
    optional={
        key: JSON
        for key in (
            "name",
            "setting",
            "seed",
            "output_dir",
            "model",
            "data",
            "method",
            "training",
            "evaluation",
        )
    },
)
CONFIG_TEXT = st.one_of(st.text(max_size=40), JSON.map(yaml.safe_dump), SECTIONS.map(yaml.safe_dump))


@SETTINGS
@given(text=CONFIG_TEXT, sections=SECTIONS)
def test_random_config_files(text, sections):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        path = root / "random.yaml"
        path.write_text(text)
        _assert_clean(*_run(["train", str(path)], root), "train")
        config = _config(root)  # a valid config with some sections replaced by random values
        for key, value in sections.items():
            config[key] = (
                value
                if not isinstance(config.get(key), dict) or not isinstance(value, dict)
                else {**config[key], **value}
            )
        path.write_text(yaml.safe_dump(config))
        _assert_clean(*_run(["train", str(path)], root), "train")


@SETTINGS
@given(rows=JSONL)
def test_random_own_data_files(rows):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        config = _config(root)
        data = root / "rows.jsonl"
        data.write_text(rows)
        config["data"] = {**config["data"], "path": str(data), "split_sizes": {"test": 1}}
        path = root / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        _assert_clean(*_run(["data", "check", str(data)], root), "data", ok=(0, 1))
        _assert_clean(*_run(["train", str(path)], root), "train")


@SETTINGS
@given(train=SUPERNI, test=SUPERNI)
def test_random_superni_task_files(train, test):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        config = _config(root)
        task = root / "data" / "demo_copy_words"
        (task / "train.json").write_text(train)
        (task / "test.json").write_text(test)
        path = root / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        _assert_clean(*_run(["data", "check", str(root / "data")], root), "data", ok=(0, 1))
        _assert_clean(*_run(["train", str(path)], root), "train")
