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


# ---------------------------------------------------------------- 6. adapters that would load as fresh


def test_an_adapter_whose_tensors_are_gone_is_refused_not_scored_as_untrained(badit_run, tmp_path, capsys):
    # the issue: manifest removed and an empty safetensors file: eval exited 0 with an untrained adapter's
    # scores over metrics.json, export shipped it
    from safetensors.torch import save_file

    copy = tmp_path / "copy"
    __import__("shutil").copytree(badit_run, copy)
    adapter = copy / "adapter"
    (adapter / "badit-manifest.json").unlink()
    save_file({}, str(adapter / "adapter_model.safetensors"))
    before = snapshot(copy)
    one_line_exit_2(capsys, ["eval", str(copy)], "lacks", "would load as an untrained adapter")
    one_line_exit_2(capsys, ["export", str(copy), "--output", str(tmp_path / "x")], "lacks")
    assert snapshot(copy) == before and not (tmp_path / "x").exists()


def test_a_pickle_in_place_of_the_adapter_weights_is_one_line(badit_run, tmp_path, capsys):
    import pickle

    copy = tmp_path / "copy"
    __import__("shutil").copytree(badit_run, copy)
    adapter = copy / "adapter"
    (adapter / "badit-manifest.json").unlink()
    (adapter / "adapter_model.safetensors").unlink()
    (adapter / "adapter_model.bin").write_bytes(pickle.dumps(__import__("collections").OrderedDict(x=print)))
    one_line_exit_2(capsys, ["eval", str(copy)], "a pickle that torch's safe loader refuses")


# ---------------------------------------------------------------- 7. strangers' folders


def stranger_run(folder: Path, tasks: dict, average: dict | None = None, method: str = "lora") -> Path:
    """A run folder as a stranger might hand it over: config.yaml and metrics.json only."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("name: s\n")
    scores = {t: {"rougeL": v, "exact_match": 0.0, "num_examples": 10} for t, v in tasks.items()}
    mean = sum(tasks.values()) / len(tasks)
    run = {"name": folder.name, "method": method, "setting": "multitask", "model": "m", "seed": 1}
    metrics = {"tasks": scores, "average": average or {"rougeL": mean, "exact_match": 0.0}, "run": run}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


@pytest.mark.parametrize(
    "tasks, average, fragment",
    [
        ({"a": 1e308}, None, "'tasks.a.rougeL' is 1e+308, not a score between 0 and 100"),
        ({"a": -5.0}, None, "is -5.0, not a score"),
        ({"a": float("nan")}, {"rougeL": 50.0, "exact_match": 0.0}, "is nan, not a score"),
        (
            {"a": 10.0, "b": 20.0},
            {"rougeL": 90.0, "exact_match": 0.0},
            "'average.rougeL' is 90.0 but its tasks' mean is 15",
        ),
    ],
)
def test_impossible_scores_are_refused_by_compare_and_report(tmp_path, capsys, tasks, average, fragment):
    # the issue: compare printed 1e308 and negative scores, NaN as "-", an average its tasks contradict
    run = stranger_run(tmp_path / "run", tasks, average)
    one_line_exit_2(capsys, ["compare", str(run)], fragment)
    one_line_exit_2(capsys, ["report", str(run), "--output", str(tmp_path / "r.html")], fragment)
    assert not (tmp_path / "r.html").exists()


def test_huge_sparse_and_deeply_nested_run_files_are_refused_at_once(tmp_path, capsys):
    # the issue: 2 GB sparse predictions took 4.2 GB and 150 s; a 100k-deep JSON line a traceback
    run = stranger_run(tmp_path / "run", {"a": 50.0})
    other = stranger_run(tmp_path / "other", {"a": 40.0}, method="badit")  # a pair: compare reads predictions
    record = {"task": "a", "id": "1", "input": "q", "prediction": "p", "references": ["p"], "rougeL": 100.0}
    (other / "predictions.jsonl").write_text(json.dumps({**record, "exact_match": 100.0}) + "\n")
    with open(run / "predictions.jsonl", "wb") as f:
        f.truncate(2 << 30)  # sparse: 2 GiB on paper, nothing on disk
    # unreadable predictions cost a comparison its interval ('-', as documented), not memory or time
    start = time.perf_counter()
    assert main(["compare", str(run), str(other)]) == 0
    assert time.perf_counter() - start < 20
    from badit.experiments.folder import RunError, RunFolder

    with pytest.raises(RunError, match="2,147,483,648 bytes, more than badit writes there"):
        RunFolder(run).predictions()
    (run / "predictions.jsonl").write_text("[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(RunError, match="line 1 is nested too deeply"):
        RunFolder(run).predictions()
    assert main(["compare", str(run), str(other)]) == 0
    capsys.readouterr()
    (run / "predictions.jsonl").unlink()
    (run / "metrics.json").write_text("[" * 100_000 + "]" * 100_000)
    one_line_exit_2(capsys, ["compare", str(run)], "nested too deeply")


def test_a_wrong_shaped_analysis_is_one_line_in_the_report(tmp_path, capsys):
    run = stranger_run(tmp_path / "run", {"a": 50.0, "b": 40.0})
    (run / "analysis").mkdir()
    analysis = {"tasks": ["a", "b"], "gradient_conflict": {"overall": [[1.0, 0.5]]}}  # 1 x 2, not 2 x 2
    (run / "analysis" / "analysis.json").write_text(json.dumps(analysis))
    one_line_exit_2(capsys, ["report", str(run), "--output", str(tmp_path / "r.html")], "not a 2 x 2 matrix")


# ---------------------------------------------------------------- 8. data and configs


def test_duplicate_ids_that_data_check_flags_are_refused_by_train(runs, tmp_path, capsys):
    # the issue: `train` accepted duplicate ids that `data check` flags (paired comparisons match by id)
    data = tmp_path / "mix.jsonl"
    rows = [{"id": f"x{i}", "task": "t", "prompt": f"p{i}", "completion": "c"} for i in range(20)]
    rows[7]["id"] = "x3"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = tiny_run_config(runs, "lora", output_dir=str(tmp_path / "run"), data={"path": str(data)})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    one_line_exit_2(capsys, ["train", str(path)], "id 'x3' repeats line 4")
    assert main(["data", "check", str(data)]) != 0
    assert "id 'x3' repeats line 4" in capsys.readouterr().out
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("", "the file is empty; a config sets at least its data"),
        ("data:\n  path: /dev/zero\n  format: jsonl\n", "/dev/zero: not a regular file"),
    ],
)
def test_unclear_inputs_get_lines_that_name_the_problem(tmp_path, capsys, content, fragment):
    path = tmp_path / "c.yaml"
    path.write_text(content)
    one_line_exit_2(capsys, ["train", str(path), f"output_dir={tmp_path / 'run'}"], fragment)


def test_a_json_array_in_a_jsonl_file_is_named_as_such(tmp_path, capsys):
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps([{"task": "t", "prompt": "p", "completion": "c"}]) + "\n")
    assert main(["data", "check", str(data)]) != 0
    assert "line 1 is a JSON array, not an object with columns" in capsys.readouterr().out


def test_report_output_replaces_only_a_report(badit_run, tmp_path, capsys):
    page = tmp_path / "index.html"
    page.write_text("<html>my homepage</html>")
    one_line_exit_2(
        capsys, ["report", str(badit_run), "--output", str(page)], "is not a page `badit report` wrote"
    )
    assert page.read_text() == "<html>my homepage</html>"
    report = tmp_path / "report.html"
    assert main(["report", str(badit_run), "--output", str(report)]) == 0
    assert main(["report", str(badit_run), "--output", str(report)]) == 0  # its own page: replaced


def test_a_pickled_checkpoint_file_is_one_line_not_a_traceback(tmp_path):
    # the issue: a pickle as a checkpoint's optimizer.pt ended `--resume` in an UnpicklingError traceback
    import pickle

    import torch

    from badit.errors import user_error_message

    path = tmp_path / "optimizer.pt"
    path.write_bytes(pickle.dumps(__import__("collections").OrderedDict(x=print)))
    with pytest.raises(pickle.UnpicklingError) as caught:
        torch.load(path, weights_only=True)  # what Trainer's resume calls
    line = user_error_message(caught.value)
    assert line is not None and "\n" not in line and "a pickle that torch's safe loader refuses" in line
