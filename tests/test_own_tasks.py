"""Own tasks and own Trainer settings in a run: data.format and column fields, every TrainingArguments
field under `training:`, flat-key hints, and runs that fail before training leave nothing behind."""

from __future__ import annotations

import json

import pytest
import yaml

from badit.cli.main import main
from badit.experiments.config import ConfigError, from_dict, load_config
from badit.experiments.stage import training_arguments
from tests.helpers import tiny_run_config, write_mix


def write_config(tmp_path, data: dict) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return str(path)


def test_trainer_arguments_pass_through_typed_and_saved_flat(tmp_path):
    path = write_config(tmp_path, {"training": {"optim": "adafactor", "adam_beta2": "0.99"}})
    config = load_config(path, ["training.torch_empty_cache_steps=5"])
    # "0.99" (a YAML string) becomes the float TrainingArguments declares
    assert config.training.trainer_args == {
        "optim": "adafactor",
        "adam_beta2": 0.99,
        "torch_empty_cache_steps": 5,
    }
    saved = config.to_dict()["training"]
    assert (saved["optim"], saved["adam_beta2"], "trainer_args" in saved) == ("adafactor", 0.99, False)
    assert from_dict(config.to_dict()) == config  # config.yaml reads back to the same config
    args = training_arguments(config.training, config.seed, tmp_path / "checkpoints")
    assert (args.optim.value, args.adam_beta2, args.learning_rate) == ("adafactor", 0.99, 2e-4)
    assert args.remove_unused_columns is False  # badit's own settings stay


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "training.optimizer=adafactor",
            "unknown field 'training.optimizer'; did you mean 'training.optim'?",
        ),
        ("learning_rate=1e-4", "unknown field 'learning_rate'; did you mean 'training.learning_rate'?"),
        ("optim=adafactor", "unknown field 'optim'; did you mean 'training.optim'?"),
        (
            "data.learning_rate=1e-4",
            "unknown field 'data.learning_rate'; did you mean 'training.learning_rate'?",
        ),
        ("training.adam_beta2=high", "training.adam_beta2 must be a number, got 'high'"),
        (
            "training.optim=adamw_nonsense",
            "training.optim TrainingArguments rejects 'adamw_nonsense': adamw_nonsense",
        ),
        (
            "training.output_dir=x",
            "training.output_dir is set by badit: the run folder is output_dir at the top",
        ),
        ("training.fp16=true", "training.fp16 is set by badit: use training.mixed_precision: fp16"),
        ("training.report_to=[tensorbored]", "training.report_to: 'tensorbored' is not an integration"),
        ("data.format=yaml", "data.format 'yaml' is unknown; use one of auto, superni, jsonl, csv, datasets"),
        (
            "data.split_sizes={test: 1.5}",
            "data.split_sizes.test: give a count (e.g. 20) or a fraction below 1",
        ),
    ],
)
def test_config_errors_name_the_field_and_the_fix(tmp_path, override, message):
    with pytest.raises(ConfigError) as excinfo:
        load_config(write_config(tmp_path, {}), [override])
    assert "\n" not in str(excinfo.value) and message in str(excinfo.value)


def test_data_fields(tmp_path):
    overrides = ["data.split_sizes={test: 0.2, seed: 3}", "data.prompt_column=question", "data.format=csv"]
    data = load_config(write_config(tmp_path, {}), overrides).data
    assert (data.split_sizes, data.prompt_column, data.format) == (
        {"test": 0.2, "seed": 3},
        "question",
        "csv",
    )


@pytest.mark.slow
def test_jsonl_mix_trains_with_only_data_path_and_failed_runs_leave_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path, tiny_run_config(tmp_path, "badit", training={"max_steps": 2}))
    out = tmp_path / "run-badit-multitask"
    (tmp_path / "bad.jsonl").write_text('{"task": "copy", "prompt": "copy ab:", "completion": ""}\n')
    assert main(["train", config, f"data.path={tmp_path / 'bad.jsonl'}"]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl line 1, column 'completion': empty or missing" in err and "Traceback" not in err
    assert not out.exists()  # the data is read before anything is written

    write_mix(tmp_path / "mix.jsonl", several_answers=True)  # 10% test: 1 per task
    assert main(["train", config, "data.path=mix.jsonl", "model.name_or_path=/nowhere/model"]) == 2
    err = capsys.readouterr().err
    assert "model.name_or_path '/nowhere/model': no such folder" in err and "Traceback" not in err
    assert not out.exists()

    # a failure after the run folder was made (here: the tokenizer cannot be read) removes it again
    (tmp_path / "empty_model").mkdir()
    assert (
        main(["train", config, "data.path=mix.jsonl", f"model.name_or_path={tmp_path / 'empty_model'}"]) == 2
    )
    assert "cannot load it" in capsys.readouterr().err
    assert not out.exists()

    # the corrected command runs without --overwrite; the only data setting given is data.path
    assert main(["train", config, "data.path=mix.jsonl"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert sorted(metrics["tasks"]) == ["copy", "reverse"]
    assert [metrics["tasks"][t]["num_examples"] for t in ("copy", "reverse")] == [1, 1]
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    reverse = next(r for r in records if r["task"] == "reverse")
    assert len(reverse["references"]) == 2 and reverse["prompt"].startswith("reverse ")
    assert yaml.safe_load((out / "config.yaml").read_text())["data"]["path"] == str(tmp_path / "mix.jsonl")
