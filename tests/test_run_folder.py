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
