"""Guards of issue 20 that need a run folder: a non-finite final adapter is never written, a finished run
is not trained again by --resume, an edited adapter_config.json and a task named like mathtext end in one
line (exit 2), not a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from badit.cli.main import main
from badit.experiments.config import from_dict
from badit.experiments.folder import RunFolder, resolve_paths
from tests.helpers import tiny_run_config

EVAL = {"max_examples_per_task": 1, "max_new_tokens": 2}


def _one_error_line(capsys, argv: list[str]) -> str:
    """The command's error line, asserting exit code 2, one line on stderr and no traceback."""
    capsys.readouterr()
    code = main(argv)
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip() and "step/s" not in line]
    assert code == 2, captured.err
    assert "Traceback" not in captured.err + captured.out
    assert len(lines) == 1, captured.err
    return lines[0]


def _untrained_run(root: Path) -> Path:
    """A run folder as `badit train` leaves it once its adapter is saved (no training, no checkpoint)."""
    from badit.experiments.stage import adapter_model

    config = resolve_paths(from_dict(tiny_run_config(root, "badit", evaluation=EVAL)))
    RunFolder(config.output_dir).prepare(config)
    model, _ = adapter_model(config)
    model.save_pretrained(Path(config.output_dir) / "adapter")
    return Path(config.output_dir)


def test_a_nonfinite_final_adapter_is_not_written(tmp_path, capsys):
    # lr 1e308: AdamW's first update (about lr * sign(gradient)) overflows the adapter to inf at step 1,
    # the last step, so no later loss shows it; before issue 20 it was written and scored with exit 0
    config = tiny_run_config(
        tmp_path, "badit", training={"max_steps": 1, "learning_rate": 1e308}, evaluation=EVAL
    )
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    line = _one_error_line(capsys, ["train", str(path)])
    run_dir = tmp_path / "run-badit-multitask"
    assert line.startswith(f"badit train: error: {run_dir}: after step 1, ")
    assert "adapter tensor(s) hold NaN/inf (first: base_model.model.model.layers.0.mlp.gate_proj." in line
    assert line.endswith(
        "no adapter written (lower training.learning_rate, then train again with --overwrite)"
    )
    assert not (run_dir / "adapter").exists() and not (run_dir / "metrics.json").exists()
    assert not list(run_dir.glob(".adapter*"))  # no staging folder either


def test_resume_of_a_trained_run_without_checkpoints_says_it_is_complete(tmp_path, capsys):
    """Its checkpoints deleted, a trained run has nothing to resume from: training it again from step 0
    would silently replace the adapter; it says how to re-evaluate instead."""
    run_dir = _untrained_run(tmp_path)
    weights = (run_dir / "adapter" / "adapter_model.safetensors").read_bytes()
    line = _one_error_line(capsys, ["train", str(run_dir), "--resume"])
    assert line == (
        f"badit train: error: {run_dir / 'adapter'} is a trained adapter and {run_dir / 'checkpoints'} holds no "
        "checkpoint to resume from: training is complete; re-evaluate with `badit eval`, or train it again "
        "with --overwrite"
    )
    assert (run_dir / "adapter" / "adapter_model.safetensors").read_bytes() == weights
    assert not (run_dir / "logs" / "train_log.jsonl").exists()  # not a step trained


def test_export_of_an_edited_adapter_config_is_one_line(tmp_path, capsys):
    """An adapter folder without manifest whose adapter_config.json was edited (r 2 -> 5: the weights no
    longer fit; an invalid router_scale; an unknown adapter type)."""
    adapter = _untrained_run(tmp_path) / "adapter"
    original = json.loads((adapter / "adapter_config.json").read_text())
    for edit, detail in (
        ({"r": 5}, "RuntimeError: Error(s) in loading state_dict"),
        ({"router_scale": "bogus"}, "ValueError: BaditConfig.router_scale='bogus' is not one of"),
        ({"peft_type": "XYZ"}, "KeyError: 'XYZ'"),
    ):
        (adapter / "adapter_config.json").write_text(json.dumps({**original, **edit}))
        line = _one_error_line(capsys, ["export", str(adapter), "--output", str(tmp_path / "out")])
        assert line.startswith(f"badit export: error: {adapter}: the adapter does not load ({detail}"), line
        assert line.endswith(
            "its adapter_config.json was edited, or does not match its weights or this base model (it has no "
            "badit-manifest.json to check it against): restore the folder or export another adapter"
        )
        assert not (tmp_path / "out").exists()


def test_report_with_a_task_named_like_mathtext(tmp_path, capsys):
    """matplotlib parses `$...$` as mathtext: `$\\frac$` stopped the figure with a ParseException."""
    for method, score in (("lora", 10.0), ("badit", 30.0)):
        folder = tmp_path / method
        folder.mkdir()
        (folder / "config.yaml").write_text(json.dumps({"name": method, "training": {"learning_rate": 1e-4}}))
        tasks = {
            name: {"rougeL": score, "exact_match": 0.0, "num_examples": 3} for name in ("$\\frac$", "$x$")
        }
        run = {"name": method, "method": method, "setting": "multitask", "model": "m", "seed": 0}
        average = {"rougeL": score, "exact_match": 0.0}
        (folder / "metrics.json").write_text(json.dumps({"tasks": tasks, "average": average, "run": run}))
    capsys.readouterr()
    assert (
        main(
            ["report", str(tmp_path / "lora"), str(tmp_path / "badit"), "--output", str(tmp_path / "r.html")]
        )
        == 0
    )
    page = (tmp_path / "r.html").read_text()
    assert "$\\frac$" in page and page.count('<img src="data:image/png;base64,') >= 1
