"""Every way a user can get a command wrong ends in ONE line naming the field or file and the fix, exit
code 2, no traceback; and `--overwrite` never deletes a folder badit did not create (issue 13)."""

from __future__ import annotations

import ast
import errno
import json
import os
from collections import Counter
from pathlib import Path

import pytest
import yaml
from transformers.trainer_utils import SchedulerType

from badit.cli.main import main
from badit.experiments.config import from_dict
from badit.experiments.folder import LOCK_FILE, MARKER_FILE, RunFolder, resolve_paths
from tests.helpers import tiny_run_config


def _config_file(root: Path, **sections) -> Path:
    path = root / "config.yml"
    path.write_text(yaml.safe_dump(tiny_run_config(root, **sections)))
    return path


def _fake_run(root: Path) -> Path:
    """A run folder as `badit train` creates it, with an untrained adapter saved (no training)."""
    from badit.experiments.stage import adapter_model

    config = resolve_paths(from_dict(tiny_run_config(root, "badit")))
    RunFolder(config.output_dir).prepare(config)
    model, _ = adapter_model(config)
    model.save_pretrained(Path(config.output_dir) / "adapter")
    return Path(config.output_dir)


def _one_error_line(capsys, argv: list[str]) -> str:
    """The command's error line, asserting exit code 2, one line on stderr and no traceback."""
    capsys.readouterr()  # what the test's own setup printed
    code = main(argv)
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code == 2, captured.err
    assert "Traceback" not in captured.err + captured.out
    assert len(lines) == 1, captured.err
    return lines[0]


# (overrides, what the one line says): checked before any model is loaded
TRAIN_CASES = {
    "lr nan": (["training.learning_rate=.nan"], "training.learning_rate must be a finite number, got nan"),
    "lr inf": (["training.learning_rate=.inf"], "training.learning_rate must be a finite number, got inf"),
    "lr -inf": (["training.learning_rate=-.inf"], "training.learning_rate must be a finite number, got -inf"),
    "epochs nan": (
        ["training.num_train_epochs=.nan", "training.max_steps=-1"],
        "training.num_train_epochs must be a finite number, got nan",
    ),
    "alpha inf": (["method.lora_alpha=.inf"], "method.lora_alpha must be a finite number, got inf"),
    "split size nan": (
        ["data.split_sizes={test: .nan}"],
        "data.split_sizes.test must be a finite number, got nan",
    ),
    "train examples 0": (
        ["data.max_train_examples_per_task=0"],
        "data.max_train_examples_per_task must be at least 1, or null for every example, got 0",
    ),
    "train examples -1": (
        ["data.max_train_examples_per_task=-1"],
        "data.max_train_examples_per_task must be at least 1, or null for every example, got -1",
    ),
    "eval examples 0": (
        ["evaluation.max_examples_per_task=0"],
        "evaluation.max_examples_per_task must be at least 1, or null for every example, got 0",
    ),
    "scheduler": (
        ["training.lr_scheduler_type=cosin"],
        "training.lr_scheduler_type 'cosin' is unknown; did you mean 'cosine'? use one of "
        + ", ".join(member.value for member in SchedulerType),
    ),
    # issue 20: numpy's seeding (Trainer's set_seed) takes 0 .. 2**32 - 1; an empty task list trained on all
    "seed -1": (
        ["seed=-1"],
        "seed must be an integer from 0 to 2**32 - 1 = 4294967295 (numpy's range), got -1",
    ),
    "seed 2**40": (
        ["seed=1099511627776"],
        "seed must be an integer from 0 to 2**32 - 1 = 4294967295 (numpy's range), got 1099511627776",
    ),
    "no tasks": (
        ["data.tasks=[]"],
        "data.tasks is an empty list; name the tasks to train on, or remove it (null) for every task",
    ),
}


@pytest.mark.parametrize("case", TRAIN_CASES)
def test_bad_training_values_are_one_line(case, tmp_path, capsys, monkeypatch):
    overrides, expected = TRAIN_CASES[case]
    config = _config_file(tmp_path, method_name="badit")

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the config was checked")

    monkeypatch.setattr("badit.experiments.stage.load_model_and_tokenizer", no_model)
    line = _one_error_line(capsys, ["train", str(config), *overrides])
    assert line == f"badit train: error: {config}: {expected}"
    assert not (tmp_path / "run-badit-multitask").exists()


def test_target_modules_matching_nothing(tmp_path, capsys):
    config = _config_file(tmp_path, method_name="badit")
    line = _one_error_line(capsys, ["train", str(config), "method.target_modules=[nothing_here]"])
    assert line == (
        f"badit train: error: method.target_modules ['nothing_here'] matches no layer of {tmp_path / 'model'}; "
        "its linear layers end in down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj (or use 'all-linear')"
    )
    assert not (tmp_path / "run-badit-multitask").exists()  # nothing trained: the new folder is removed again


LOADED_CASES = {  # found by tests/test_cli_property.py: problems that show once the model and data are there
    "prompt end longer than max_source_length": (
        ["data.max_source_length=3"],
        "max_source_length=3 is shorter than the fixed end of the prompt (8 tokens); raise data.max_source_length",
    ),
    "chat template missing": (
        ["data.use_chat_template=true"],
        "need a tokenizer that has a chat template; use an instruct model (model.name_or_path) or "
        "prompt/completion rows (data.use_chat_template: false)",
    ),
    "attention package missing": (
        ["model.attn_implementation=flash_attention_2"],
        "a package it needs is missing (FlashAttention2 has been toggled on",
    ),
    "deepspeed file missing": (
        ["training.deepspeed=no-such-ds.json"],
        "training.deepspeed no-such-ds.json: no such file; give a DeepSpeed JSON config (or null)",
    ),
    # issue 20: K * r is bounded by the targeted layers (gate_proj of the tiny model: 64 in, 96 out)
    "rank too large": (
        ["method.r=1000000"],
        "method.num_experts * method.r = 3 * 1000000 = 3000000 adapter components do not fit layer "
        "model.layers.0.mlp.gate_proj (64 in, 96 out): at most min(in, out) = 64",
    ),
    "too many experts": (
        ["method.num_experts=100000", "method.top_k=1"],
        "method.num_experts * method.r = 100000 * 2 = 200000 adapter components do not fit",
    ),
}


@pytest.mark.parametrize("case", LOADED_CASES)
def test_problems_seen_with_the_model_loaded(case, tmp_path, capsys):
    overrides, expected = LOADED_CASES[case]
    config = _config_file(tmp_path, method_name="lora")
    line = _one_error_line(capsys, ["train", str(config), *overrides])
    assert line.startswith("badit train: error: ") and expected in line
    assert not (tmp_path / "run-lora-multitask").exists()


def _output_dir_file(root: Path) -> tuple[str, str]:
    (root / "a-file").write_text("mine")
    return str(root / "a-file"), f"output_dir {root / 'a-file'} is a file, not a folder"


def _output_dir_under_file(root: Path) -> tuple[str, str]:
    (root / "a-file").write_text("mine")
    return str(
        root / "a-file" / "run"
    ), f"output_dir {root / 'a-file' / 'run'} lies under {root / 'a-file'}, which is a file"


OUTPUT_CASES = {"file": _output_dir_file, "under a file": _output_dir_under_file}


@pytest.mark.parametrize("case", OUTPUT_CASES)
def test_unusable_output_dir(case, tmp_path, capsys):
    output, expected = OUTPUT_CASES[case](tmp_path)
    config = _config_file(tmp_path)
    line = _one_error_line(capsys, ["train", str(config), "--output", output])
    assert line == f"badit train: error: {expected}; set output_dir (or --output) to a folder you can write"
    assert (tmp_path / "a-file").read_text() == "mine"


def test_read_only_output_dir(tmp_path, capsys, monkeypatch):
    # The tests may run as root, for whom chmod does not forbid anything: os.access answers as for a user.
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked else real_access(p, mode))
    config = _config_file(tmp_path)
    line = _one_error_line(capsys, ["train", str(config), "--output", str(locked / "run")])
    assert line == (
        f"badit train: error: output_dir {locked / 'run'}: {locked} is not writable (permissions); "
        "set output_dir (or --output) to a folder you can write"
    )


def _train_with_failing_fsync(tmp_path, capsys, monkeypatch, error: OSError) -> str:
    """The one error line of `badit train` when every fsync (the run folder's first writes) fails."""
    config = _config_file(tmp_path)

    def fail(fd):
        raise error

    monkeypatch.setattr("badit.data.files.os.fsync", fail)
    return _one_error_line(capsys, ["train", str(config)])


def test_disk_full_names_the_file(tmp_path, capsys, monkeypatch):
    line = _train_with_failing_fsync(
        tmp_path, capsys, monkeypatch, OSError(errno.ENOSPC, "No space left on device")
    )
    marker = tmp_path / "run-lora-multitask" / MARKER_FILE
    assert line == (
        f"badit train: error: disk full while writing {marker}; free some space "
        "(the last complete checkpoint is kept) and rerun"
    )
    assert not marker.exists() and not list(marker.parent.glob(".*.tmp"))  # no half-written file is left


@pytest.mark.parametrize(
    "message, expected",
    [
        (
            "Error while serializing: I/O error: No space left on device (os error 28)",
            "disk full while writing a tensor file (Error while serializing: I/O error: No space left on device "
            "(os error 28)); free some space and rerun",
        ),
        (
            "Error while deserializing header: header too small",
            "a saved tensor file is damaged or truncated (Error while deserializing header: header too small); "
            "restore it, or resume from an earlier checkpoint by deleting the damaged one",
        ),
    ],
)
def test_safetensors_errors_are_one_line(message, expected, tmp_path, capsys, monkeypatch):
    # as a real 250 KB tmpfs gave when a checkpoint's adapter did not fit (safetensors names no file)
    from safetensors import SafetensorError

    def fail(*args, **kwargs):
        raise SafetensorError(message)

    monkeypatch.setattr("badit.experiments.settings.run", fail)
    line = _one_error_line(capsys, ["train", str(_config_file(tmp_path))])
    assert line == f"badit train: error: {expected}"


def test_permission_denied_while_writing(tmp_path, capsys, monkeypatch):
    line = _train_with_failing_fsync(
        tmp_path, capsys, monkeypatch, PermissionError(errno.EACCES, "Permission denied")
    )
    assert line.startswith(f"badit train: error: permission denied on {tmp_path / 'run-lora-multitask'}")


def test_run_config_that_is_not_yaml(tmp_path, capsys):
    run_dir = _fake_run(tmp_path)
    (run_dir / "config.yaml").write_text("name: [unclosed\nseed: 1\n")
    for command in (["train", str(run_dir), "--resume"], ["eval", str(run_dir)]):
        line = _one_error_line(capsys, command)
        assert line == (
            f"badit {command[0]}: error: {run_dir / 'config.yaml'}: invalid YAML at line 2, column 5: "
            "expected ',' or ']', but got ':'; fix the file or give another config file"
        )


@pytest.mark.parametrize("size", ["half", "header", "empty"])
def test_truncated_adapter(size, tmp_path, capsys):
    run_dir = _fake_run(tmp_path)
    weights = run_dir / "adapter" / "adapter_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: {"half": len(data) // 2, "header": 4, "empty": 0}[size]])
    line = _one_error_line(capsys, ["eval", str(run_dir)])
    assert line.startswith(
        f"badit eval: error: {run_dir / 'adapter'}: the adapter's weights are damaged or truncated"
    )
    assert line.endswith(f"restore the folder or train it again (`badit train {run_dir} --resume`)")


GOOD = {"rougeL": 50.0, "exact_match": 25.0}
METRICS_SHAPES = {
    "a list": ([1, 2], "the top level is a list, not an object"),
    "no tasks": ({"average": GOOD}, "'tasks' is missing or not an object"),
    "tasks a list": ({"tasks": ["a"], "average": GOOD}, "'tasks' is missing or not an object"),
    "task not an object": ({"tasks": {"a": 3}, "average": GOOD}, "'tasks.a' is not an object"),
    "score a string": (
        {"tasks": {"a": {"rougeL": "high", "exact_match": 1}}, "average": GOOD},
        "'tasks.a.rougeL' is missing or not a number",
    ),
    "no average": ({"tasks": {"a": GOOD}, "average": {}}, "'average.rougeL' is missing or not a number"),
    "continual": (
        {"tasks": {"a": GOOD}, "average": GOOD, "continual": {"rougeL": {"AP": "x"}}},
        "'continual.rougeL' does not hold the continual metrics (AP, forgetting, BWT, FWT)",
    ),
    "not json": ("{oops", "Expecting property name enclosed in double quotes"),
}


@pytest.mark.parametrize("shape", METRICS_SHAPES)
def test_compare_on_metrics_of_the_wrong_shape(shape, tmp_path, capsys):
    content, expected = METRICS_SHAPES[shape]
    (tmp_path / "run").mkdir()
    path = tmp_path / "run" / "metrics.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    line = _one_error_line(capsys, ["compare", str(tmp_path / "run")])
    assert line.startswith(f"badit compare: error: {path}: not a badit metrics file (")
    assert expected in line and line.endswith(f"`badit eval {tmp_path / 'run'}` rewrites it")


@pytest.mark.parametrize("option", ["--output", "--json"])
def test_compare_output_that_is_a_folder(option, tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text(json.dumps({"tasks": {"a": GOOD}, "average": GOOD}))
    line = _one_error_line(capsys, ["compare", str(tmp_path / "run"), option, str(tmp_path)])
    assert line == f"badit compare: error: {tmp_path} is a folder; give a file name"


# ----------------------------------------------------------------------------------------------
# --overwrite deletes only what badit created


def test_overwrite_refuses_a_users_project(tmp_path, capsys):
    """The case of the issue: a folder with a config.yaml and other files, not made by badit."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "config.yaml").write_text("name: my own file\n")
    (project / "notes.txt").write_text("a year of work")
    config = _config_file(tmp_path)
    line = _one_error_line(capsys, ["train", str(config), "--output", str(project), "--overwrite"])
    assert line == (
        f"badit train: error: {project} is not a folder badit created (no {MARKER_FILE}), so --overwrite will "
        "not delete it; choose another output_dir (or delete the folder yourself)"
    )
    assert sorted(p.name for p in project.iterdir()) == ["config.yaml", "notes.txt"]
    assert (project / "notes.txt").read_text() == "a year of work"
    # --resume does not write into it either
    line = _one_error_line(capsys, ["train", str(config), "--output", str(project), "--resume"])
    assert "--resume" in line and "differs" in line
    assert sorted(p.name for p in project.iterdir()) == ["config.yaml", "notes.txt"]


def test_overwrite_refuses_a_folder_without_config(tmp_path, capsys):
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "main.py").write_text("print(1)")
    config = _config_file(tmp_path)
    for flag in ("--overwrite", "--resume"):
        line = _one_error_line(capsys, ["train", str(config), "--output", str(project), flag])
        assert str(project) in line and "choose another output_dir" in line
    assert (project / "src" / "main.py").read_text() == "print(1)"


def test_overwrite_deletes_a_marked_run(tmp_path, capsys, monkeypatch):
    """A folder badit marked is replaced: its old files are gone before the new run starts."""
    run_dir = _fake_run(tmp_path)
    (run_dir / "old-file").write_text("x")
    assert json.loads((run_dir / MARKER_FILE).read_text()) == {"badit_run": 1}
    seen = {}

    def stop(ctx, train_tasks, eval_tasks):  # the setting is where training would start
        seen["files"] = sorted(p.name for p in ctx.run_dir.iterdir())
        raise KeyboardInterrupt

    monkeypatch.setitem(
        __import__("badit.experiments.settings").experiments.settings.SETTINGS, "multitask", stop
    )
    code = main(["train", str(_config_file(tmp_path, method_name="badit")), "--overwrite"])
    assert code == 130
    assert seen["files"] == [
        MARKER_FILE,
        LOCK_FILE,
        "config.yaml",
    ]  # the lock: held by the new run (issue 20)


DELETING_CALLS = ("rmtree", "unlink", "rmdir", "removedirs")  # and os.remove


def deletions(root: Path) -> Counter:
    """Every call that deletes files or folders in the modules under ``root``, as "file: call" (read with
    ast, so that a call split over lines, or ``os.remove`` beside a list's ``.remove``, is seen right)."""
    found = Counter()
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            owner, name = node.func.value, node.func.attr
            if name in DELETING_CALLS or (
                name == "remove" and isinstance(owner, ast.Name) and owner.id == "os"
            ):
                found[f"{path.relative_to(root).as_posix()}: {ast.unparse(node)}"] += 1
    return found


def test_no_code_removes_unmarked_folders():
    """Every deletion in badit is one of the reviewed, safe ones (see docs/reliability.md): exactly these,
    so that a new one must be reviewed and a stale entry is dropped."""
    reviewed = Counter(
        {
            "adapter/export.py: shutil.rmtree(old, ignore_errors=True)": 1,  # its temp folder of the replaced export
            "adapter/export.py: shutil.rmtree(staging, ignore_errors=True)": 1,  # its own staging folder (one writer)
            "data/files.py: Path(tmp).unlink(missing_ok=True)": 2,  # its own temp file
            "experiments/folder.py: shutil.rmtree(folder)": 1,  # RunFolder.remove: only a marked run folder
            "training/model_loading.py: shutil.rmtree(staging, ignore_errors=True)": 1,  # its own staging folder
            # crash-safe writes (badit/training/checkpoints.py): its staging folders, the replaced checkpoint
            # or adapter (".NAME.old"), the empty ".staging" parent; the integrity module's temp file
            "training/checkpoints.py: shutil.rmtree(staging, ignore_errors=True)": 3,
            "training/checkpoints.py: shutil.rmtree(old, ignore_errors=True)": 2,
            "training/checkpoints.py: staging.parent.rmdir()": 1,
            "adapter/integrity.py: Path(tmp).unlink(missing_ok=True)": 1,
            "adapter/card.py: os.unlink(temporary)": 1,  # its own temp file, when the card's write fails
            # RunFolder.remove(keep_lock=True) (--overwrite of a marked run: its lock file kept) and a folder
            # that holds only the lock file this process created
            "experiments/folder.py: shutil.rmtree(entry)": 1,
            "experiments/folder.py: entry.unlink()": 1,
            "experiments/folder.py: (self.path / LOCK_FILE).unlink(missing_ok=True)": 1,
            "experiments/folder.py: self.path.rmdir()": 1,
        }
    )
    assert deletions(Path(__file__).resolve().parents[1] / "badit") == reviewed


def test_the_deletion_finder_sees_every_form(tmp_path):
    (tmp_path / "m.py").write_text(
        "import os, shutil\nshutil.rmtree(\n    d)\nos.remove(f)\np.rmdir()\nitems.remove(x)\nq.unlink()\n"
    )
    assert deletions(tmp_path) == Counter(
        {"m.py: shutil.rmtree(d)": 1, "m.py: os.remove(f)": 1, "m.py: p.rmdir()": 1, "m.py: q.unlink()": 1}
    )
