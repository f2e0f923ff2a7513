"""A run folder is self-contained: a moved or copied run resumes and evaluates in its new place and
never writes to the old one (issue 13)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from badit.cli.main import main
from badit.experiments.config import from_dict
from badit.experiments.settings import run
from tests.helpers import KillAfterSave, SimulatedKill, tiny_run_config


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (relative path -> digest)."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.mark.slow
def test_a_copied_run_resumes_and_evaluates_in_its_new_place(tmp_path):
    config = tiny_run_config(
        tmp_path, "badit", training={"max_steps": 6, "save_steps": 2, "save_total_limit": None}
    )
    original = Path(config["output_dir"])
    with pytest.raises(SimulatedKill):
        run(from_dict(config), extra_callbacks=[KillAfterSave(4)])
    assert (original / "checkpoints" / "checkpoint-4").is_dir() and not (original / "adapter").exists()
    moved = tmp_path / "elsewhere" / "moved"
    shutil.copytree(original, moved, symlinks=True)  # as `cp -a`
    before = file_hashes(original)
    assert len(before) > 10

    assert main(["train", str(moved), "--resume"]) == 0
    assert file_hashes(original) == before  # the old folder: byte for byte unchanged, nothing added
    metrics = json.loads((moved / "metrics.json").read_text())
    assert metrics["run"]["global_step"] == 6  # resumed from step 4 (not from 0) up to the end
    steps = [
        json.loads(line)["step"] for line in (moved / "logs" / "train_log.jsonl").read_text().splitlines()
    ]
    assert steps[-1] == 6 and 5 in steps
    assert (moved / "checkpoints" / "checkpoint-6").is_dir() and (moved / "adapter").is_dir()

    assert main(["eval", str(moved)]) == 0
    assert file_hashes(original) == before
    assert json.loads((moved / "metrics.json").read_text())["run"]["reevaluated"] is True


# ----------------------------------------------------------------------------------------------
# The run-folder object (issue 17): layout, one reader per file, integrity before loading


def test_layout_of_the_three_settings(tmp_path):
    from badit.experiments.config import RunConfig
    from badit.experiments.folder import RunError, RunFolder

    run = RunFolder(tmp_path / "run")
    assert run.task_stage("t1").adapter == tmp_path / "run" / "tasks" / "t1" / "adapter"
    assert run.continual_stage(3, "t2").path == tmp_path / "run" / "stages" / "03-t2"
    assert run.base_stage.metrics_file == tmp_path / "run" / "stages" / "base" / "metrics.json"
    assert run.log_file("router") == tmp_path / "run" / "logs" / "router_health.jsonl"
    for stage in ("10-c", "02-b", "base", "00-a"):  # the base evaluation is not a trained stage
        (tmp_path / "run" / "stages" / stage).mkdir(parents=True)
    assert [s.name for s in run.stages("continual")] == ["00-a", "02-b", "10-c"]
    assert run.stages("multitask") == [run]
    continual = RunConfig(setting="continual")
    assert run.final_adapter(continual) == tmp_path / "run" / "stages" / "10-c" / "adapter"
    with pytest.raises(RunError, match="single-task run: it has one adapter per task"):
        run.final_adapter(RunConfig(setting="single"))
    with pytest.raises(RunError, match="no trained adapter"):
        run.require_adapter(run.final_adapter(continual))


def test_one_metrics_reader_checks_the_shape(tmp_path):
    from badit.experiments.folder import RunError, RunFolder

    run = RunFolder(tmp_path)
    with pytest.raises(RunError, match=r"no metrics.json yet .*`badit train .* --resume` or `badit eval "):
        run.metrics()
    good = {"rougeL": 50.0, "exact_match": 25.0}
    run.metrics_file.write_text(json.dumps({"tasks": {}, "average": good}))
    with pytest.raises(RunError, match=r"not a badit metrics file \('tasks' holds no task\)"):
        run.metrics()
    run.metrics_file.write_text(json.dumps({"tasks": {"a": good}, "average": good}))
    assert run.metrics()["tasks"]["a"]["rougeL"] == 50.0


def test_logs_skip_a_torn_last_line_only(tmp_path):
    from badit.experiments.folder import RunError, RunFolder

    run = RunFolder(tmp_path)
    assert run.logs_of("train") == []  # no log yet
    run.logs.mkdir()
    run.log_file("train").write_text('{"step": 1}\n{"step": 2}\n{"ste')  # killed mid-write
    assert run.logs_of("train") == [{"step": 1}, {"step": 2}]
    run.log_file("train").write_text('{"step": 1}\n{"ste\n{"step": 3}\n')
    with pytest.raises(RunError, match="train_log.jsonl: line 2 is not JSON"):
        run.logs_of("train")


def test_the_integrity_check_runs_before_anything_is_loaded(tmp_path):
    from peft import LoraConfig, get_peft_model

    from badit.adapter.integrity import MANIFEST_FILE, IntegrityError, write_manifest
    from badit.experiments.folder import RunError, load_adapter
    from tests.helpers import make_tiny_model

    folder = tmp_path / "adapter"
    get_peft_model(make_tiny_model(), LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(folder)
    write_manifest(folder)
    loads = []

    def base():
        loads.append(1)
        return make_tiny_model(), None

    model, _ = load_adapter(base, folder, "fix it")
    assert loads == [1] and not model.training
    weights = folder / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF  # same size, one byte of a weight changed
    weights.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="does not match its sha256"):
        load_adapter(base, folder, "fix it")
    (folder / MANIFEST_FILE).unlink()
    weights.write_bytes(weights.read_bytes()[:8])  # truncated, no manifest to tell
    with pytest.raises(RunError, match=r"the adapter's weights are damaged or truncated \(.*\); fix it$"):
        load_adapter(base, folder, "fix it")
    assert loads == [1]  # neither damaged folder loaded the base model


def test_config_overrides_as_values_equal_the_command_line(tmp_path):
    from badit.experiments.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text("name: c\ndata:\n  tasks: [x]\n")
    as_text = load_config(path, ["data.tasks=[a, b]", "training.learning_rate=1e-3", "name=run 1"])
    as_values = load_config(path, {"data.tasks": ["a", "b"], "training.learning_rate": 1e-3, "name": "run 1"})
    assert as_values == as_text and as_values.data.tasks == ["a", "b"]


def test_no_run_file_name_outside_the_run_folder_module():
    """Run file and folder names are spelled once, in badit/experiments/folder.py."""
    import re

    quoted = (
        r"config\.yaml|metrics\.json|predictions\.jsonl|done\.json|summary\.md|\.badit-run|train_log\.jsonl"
        r"|regroup\.jsonl|router_health\.jsonl|sweep\.json|sweep\.md|merge\.json"
    )
    names = re.compile(rf"""(["'])({quoted})\1|/ (["'])(adapter|checkpoints|logs|tasks|stages|analysis)\3""")
    root = Path(__file__).resolve().parents[1] / "badit"
    found = [
        f"{path.relative_to(root)}:{i}: {line.strip()}"
        for path in sorted(root.rglob("*.py"))
        if path.name != "folder.py" or path.parent.name != "experiments"
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if names.search(line)
    ]
    assert found == []
