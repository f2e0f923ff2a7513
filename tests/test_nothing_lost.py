"""Issue 33: the commands that write (export, merge, eval --output, analyze --output) write only into a
folder they own or a new one, take the run lock and never delete what they did not write; results say
what they were scored on; duplicate YAML keys and alias bombs are refused. Each case is the issue's
reproduction on real files (and, for the live run, a real second process holding the lock), run through
the command line as a user runs it: one line, exit 2, nothing touched."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from badit.cli.main import main
from tests.helpers import tiny_run_config


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones included, but the lock, which holds its holder's pid)
    -> sha256 of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def one_line_exit_2(capsys, argv: list[str], *fragments: str) -> str:
    """Run ``badit argv``; assert exit 2 and one error line containing every fragment; return the line."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, err
    return err


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A trained tiny BADIT multitask run and a tiny LoRA single-task run (for merge), under one root."""
    from badit.experiments.config import from_dict
    from badit.experiments.settings import run

    root = tmp_path_factory.mktemp("runs")
    run(from_dict(tiny_run_config(root, "badit", training={"max_steps": 3})))
    run(from_dict(tiny_run_config(root, "lora", "single", training={"max_steps": 2})))
    return root


@pytest.fixture
def badit_run(runs) -> Path:
    return runs / "run-badit-multitask"


# ---------------------------------------------------------------- 1. export


def test_export_refuses_a_users_folder_and_its_own_run_and_touches_nothing(runs, badit_run, tmp_path, capsys):
    # the issue: `badit export RUN --output DIR` deleted DIR whatever it was (exit 0)
    mine = tmp_path / "my-project"
    mine.mkdir()
    (mine / "notes.txt").write_text("a week of work")
    before, run_before = snapshot(mine), snapshot(badit_run)
    one_line_exit_2(
        capsys, ["export", str(badit_run), "--output", str(mine)], "holds files that no `badit export` wrote"
    )
    one_line_exit_2(
        capsys, ["export", str(badit_run), "--output", str(badit_run)], "which this command reads"
    )
    one_line_exit_2(
        capsys, ["export", str(badit_run), "--output", str(runs)], "holds", "which this command reads"
    )
    one_line_exit_2(
        capsys, ["export", str(badit_run), "--output", str(runs / "run-lora-single")], "no `badit export`"
    )
    assert snapshot(mine) == before and snapshot(badit_run) == run_before
    assert not list(runs.glob(".*-old-*")) and not list(tmp_path.glob(".*"))  # no debris


def test_export_writes_a_new_folder_and_replaces_only_its_own_export(badit_run, tmp_path):
    out = tmp_path / "exported"
    assert main(["export", str(badit_run), "--output", str(out)]) == 0
    assert json.loads((out / ".badit-output").read_text()) == {"badit_output": "export"}
    first = snapshot(out)
    assert main(["export", str(badit_run), "--weights", "2,1,1", "--output", str(out)]) == 0
    assert snapshot(out) != first  # another routing: the earlier export was replaced whole
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["export", str(badit_run), "--output", str(empty)]) == 0


def test_an_export_of_non_finite_weights_writes_nothing(badit_run, tmp_path, capsys):
    out = ["--output", str(tmp_path / "x")]
    one_line_exit_2(capsys, ["export", str(badit_run), "--weights", "1e308,1,1", *out], "give finite numbers")
    # finite weights whose product with the factors overflows float32: caught in the files before publishing
    merged = ["--format", "merged", "--weights", "3e38,3e38,3e38", *out]  # W + s B diag(g) A overflows
    one_line_exit_2(capsys, ["export", str(badit_run), *merged], "holds NaN or inf", "nothing was written")
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".x-*"))


# ---------------------------------------------------------------- 2. merge


def hold_lock(folder: Path) -> subprocess.Popen:
    """A second process that holds the run lock of ``folder`` (as a live training does) until killed."""
    code = (
        "import sys, time\n"
        "from badit.experiments.folder import RunLock\n"
        "lock = RunLock(sys.argv[1]).acquire()\n"
        "print('locked', flush=True)\n"
        "time.sleep(600)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "locked"
    return process


def test_merge_overwrite_refuses_a_live_run(runs, badit_run, capsys):
    # the issue: `badit merge --overwrite` replaced a live training run's folder; its metrics then said
    # `lora+ties` for a trained LoRA
    before = snapshot(badit_run)
    holder = hold_lock(badit_run)
    try:
        argv = [
            "merge",
            str(runs / "run-lora-single"),
            "--method",
            "ties",
            "--output",
            str(badit_run),
            "--overwrite",
        ]
        one_line_exit_2(capsys, argv, "another badit process (pid", "is writing this run")
    finally:
        holder.kill()
        holder.wait()
    assert snapshot(badit_run) == before


def test_merge_into_an_existing_run_without_overwrite_names_overwrite_not_resume(runs, badit_run, capsys):
    line = one_line_exit_2(
        capsys,
        ["merge", str(runs / "run-lora-single"), "--method", "ties", "--output", str(badit_run)],
        "already holds a run; pass --overwrite",
    )
    assert "--resume" not in line  # merge has no --resume


@pytest.mark.parametrize("method, weight", [("task-arithmetic", "1e308"), ("ties", "1e30")])
def test_merge_with_an_overflowing_weight_writes_nothing(runs, tmp_path, capsys, method, weight):
    # the issue: --weight 1e308 wrote 2,304 inf values and published scores; 1e30 (ties) a NaN SVD error
    out = tmp_path / "merged"
    argv = [
        "merge",
        str(runs / "run-lora-single"),
        "--method",
        method,
        "--weight",
        weight,
        "--output",
        str(out),
    ]
    one_line_exit_2(capsys, argv, "overflows", "nothing was written")
    assert not out.exists()


# ---------------------------------------------------------------- 3. eval --output, analyze --output


def test_eval_output_refuses_another_run_and_writes_its_own_folder(runs, badit_run, tmp_path, capsys):
    # the issue: `badit eval A --output B` (B another finished run) overwrote B's metrics and predictions
    other = runs / "run-lora-single"
    before = snapshot(other)
    one_line_exit_2(
        capsys, ["eval", str(badit_run), "--output", str(other)], "holds files that no `badit eval`"
    )
    assert snapshot(other) == before
    out = tmp_path / "eval-dev"
    assert main(["eval", str(badit_run), "evaluation.split=dev", "--output", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["run"]["evaluation"]["split"] == "dev"  # what the scores were computed on
    assert main(["eval", str(badit_run), "--output", str(out)]) == 0  # its own output: replaced
    assert json.loads((out / "metrics.json").read_text())["run"]["evaluation"]["split"] == "test"


def test_analyze_output_refuses_a_users_folder(badit_run, tmp_path, capsys):
    mine = tmp_path / "figures"
    mine.mkdir()
    (mine / "paper.tex").write_text("\\section{}")
    one_line_exit_2(capsys, ["analyze", str(badit_run), "--output", str(mine)], "no `badit analyze` wrote")
    assert (mine / "paper.tex").read_text() == "\\section{}" and len(list(mine.iterdir())) == 1


# ---------------------------------------------------------------- 4. results carry what they were scored on


def test_a_resume_that_changes_scoring_is_refused_once_something_is_scored(badit_run, capsys):
    # the issue: `--resume evaluation.split=dev` mixed test- and dev-scored stages in one score matrix
    assert json.loads((badit_run / "metrics.json").read_text())["run"]["evaluation"]["split"] == "test"
    before = snapshot(badit_run)
    argv = ["train", str(badit_run / "config.yaml"), "--resume", "evaluation.split=dev"]
    one_line_exit_2(capsys, argv, "evaluation.split: 'test' -> 'dev'", "badit eval")
    assert snapshot(badit_run) == before


# ---------------------------------------------------------------- 5. YAML


def test_duplicate_yaml_keys_are_refused_naming_both_lines(runs, tmp_path, capsys):
    # the issue: a second `training:` section silently replaced the first
    config = tiny_run_config(runs, "lora", output_dir=str(tmp_path / "run"))
    text = yaml.safe_dump(config, sort_keys=False) + "training:\n  max_steps: 1\n"
    path = tmp_path / "twice.yaml"
    path.write_text(text)
    first = 1 + text.splitlines().index("training:")
    last = len(text.splitlines()) - 1
    one_line_exit_2(capsys, ["train", str(path)], f"key 'training' appears twice (lines {first} and {last})")
    assert not (tmp_path / "run").exists()


def test_an_alias_bomb_in_a_strangers_run_folder_is_refused_at_once(runs, tmp_path, capsys):
    # the issue: a 1.5 KB config.yaml sent compare and report to 3.7 GB
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    rows = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for level in "bcdefghi":
        previous = chr(ord(level) - 1)
        rows.append(f"{level}: &{level} [" + ", ".join([f"*{previous}"] * 9) + "]")
    (stranger / "config.yaml").write_text("\n".join(rows) + "\n")  # 9^9 = 387 million strings once expanded
    scores = {"rougeL": 50.0, "exact_match": 25.0, "num_examples": 10}
    run = {"name": "s", "method": "lora", "setting": "multitask", "model": "m", "seed": 1}
    metrics = {"tasks": {"t": scores}, "average": {"rougeL": 50.0, "exact_match": 25.0}, "run": run}
    (stranger / "metrics.json").write_text(json.dumps(metrics))
    assert (stranger / "config.yaml").stat().st_size < 1000
    start = time.perf_counter()
    for argv in (["compare", str(stranger)], ["report", str(stranger), "--output", str(tmp_path / "r.html")]):
        main(argv)
        assert "expand to more than 100,000 values" in capsys.readouterr().err
    assert time.perf_counter() - start < 30
