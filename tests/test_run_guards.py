"""Guards of issue 20 that need a run folder: a non-finite final adapter is never written, a finished run
is not trained again by --resume, an edited adapter_config.json and a task named like mathtext end in one
line (exit 2), not a traceback; a copy without the hidden marker resumes in its own folder; an edited
config.yaml and a run folder's trust_remote_code are refused; one writer per run and sweep folder (a lock,
tested with two live processes)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from badit.cli.main import main
from badit.experiments.config import from_dict
from badit.experiments.folder import LOCK_FILE, MARKER_FILE, RunError, RunFolder, RunLock, resolve_paths
from tests.helpers import tiny_run_config, write_sweep
from tests.test_run_folder import file_hashes

ROOT = Path(__file__).resolve().parents[1]

EVAL = {"max_examples_per_task": 1, "max_new_tokens": 2}
SCORES = {"rougeL": 50.0, "exact_match": 25.0, "num_examples": 3}


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


# ----------------------------------------------------------------------------------------------
# A copy without the hidden marker, config.yaml's integrity, trust_remote_code from a run folder


def _killed_run(root: Path) -> Path:
    """A tiny run killed right after its checkpoint of step 2 (of 4)."""
    from badit.experiments.settings import run
    from tests.helpers import KillAfterSave, SimulatedKill

    config = tiny_run_config(root, "lora", training={"max_steps": 4, "save_steps": 2}, evaluation=EVAL)
    with pytest.raises(SimulatedKill):
        run(from_dict(config), extra_callbacks=[KillAfterSave(2)])
    return Path(config["output_dir"])


@pytest.mark.slow
def test_a_copy_without_the_marker_resumes_in_its_own_folder(tmp_path, capsys):
    """`cp -r RUN/* COPY/` leaves the hidden .badit-run behind; the copy resumed into RUN (issue 20). Its
    config.yaml's first line (badit's, with the sha256 of the rest) tells badit that COPY is the run."""
    original = _killed_run(tmp_path)
    copy = tmp_path / "copy"
    copy.mkdir()
    for entry in original.iterdir():  # as `cp -r RUN/* COPY/`: no hidden files
        if not entry.name.startswith("."):
            (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, copy / entry.name)
    assert not (copy / MARKER_FILE).exists()
    before = file_hashes(original)

    assert main(["train", str(copy), "--resume"]) == 0
    assert file_hashes(original) == before  # nothing written into the original
    info = json.loads((copy / "metrics.json").read_text())["run"]
    assert (info["global_step"], info["train_parts"]) == (4, 2)  # resumed from the copy's step 2
    assert (copy / MARKER_FILE).is_file()  # now marked as the run it is

    # an edited config.yaml (here: the learning rate) is refused by every command that reads it
    text = (copy / "config.yaml").read_text()
    (copy / "config.yaml").write_text(text.replace("learning_rate: 0.005", "learning_rate: 0.5"))
    for command in (["eval", str(copy)], ["train", str(copy), "--resume"]):
        line = _one_error_line(capsys, command)
        assert line == (
            f"badit {command[0]}: error: {copy / 'config.yaml'} was changed after badit wrote it (its sha256 "
            "does not match its first line): restore it from where you got the run, or train a new run from "
            "an edited copy (`badit train EDITED.yaml`); overrides on the command line change a run without "
            "editing it"
        )


def test_a_marker_less_copy_of_an_older_badit_s_run_is_refused_with_the_fix(tmp_path, capsys):
    """Without badit's first line in config.yaml (an older badit) nothing says the copy is the run: --resume
    would continue the folder its config names, so it is refused, naming --output."""
    original = _untrained_run(tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    (copy / MARKER_FILE).unlink()
    saved = yaml.safe_load((copy / "config.yaml").read_text())
    (copy / "config.yaml").write_text(yaml.safe_dump(saved))  # as an older badit wrote it: no first line
    line = _one_error_line(capsys, ["train", str(copy), "--resume"])
    assert line == (
        f"badit train: error: {copy} holds a run whose config.yaml names another folder ({original}); to "
        f"continue it here, pass --output {copy}"
    )


def test_the_user_s_own_config_with_trust_remote_code_resumes(tmp_path):
    """`badit train MY.yaml --resume` (or a sweep's run) with model.trust_remote_code: true in the user's own
    file: the saved config.yaml is only compared with it, so no refusal."""
    config = resolve_paths(from_dict(tiny_run_config(tmp_path, "lora", model={"trust_remote_code": True})))
    folder = RunFolder(config.output_dir)
    folder.prepare(config)
    folder.prepare(config, resume=True)  # no RunError
    with pytest.raises(RunError, match="model.trust_remote_code is true"):
        folder.config()  # read from the folder alone (eval, export, analyze): refused


@pytest.mark.slow
def test_trust_remote_code_of_a_run_folder_needs_the_command_line(tmp_path, capsys):
    """A downloaded run whose config.yaml (consistent, or without badit's first line as an older badit
    wrote it) says model.trust_remote_code: true would run the model folder's Python code; refused by
    eval, export, train --resume and analyze until --trust-remote-code is given."""
    run_dir = _untrained_run(tmp_path)
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    saved["model"]["trust_remote_code"] = True
    (run_dir / "config.yaml").write_text(yaml.safe_dump(saved))  # no header: as an older badit wrote it
    expected = (
        f"error: {run_dir / 'config.yaml'}: model.trust_remote_code is true, which runs Python code from the "
        f"model {tmp_path / 'model'}; if you trust it, pass --trust-remote-code (train: or "
        "model.trust_remote_code=true)"
    )
    commands = {
        "eval": ["eval", str(run_dir)],
        "export": ["export", str(run_dir), "--output", str(tmp_path / "out")],
        "train": ["train", str(run_dir), "--resume"],
        "analyze": ["analyze", str(run_dir)],
    }
    for name, command in commands.items():
        assert _one_error_line(capsys, command) == f"badit {name}: {expected}"
    assert not (run_dir / "metrics.json").exists() and not (tmp_path / "out").exists()
    assert main(["eval", str(run_dir), "--trust-remote-code"]) == 0  # the user said so
    assert (run_dir / "metrics.json").is_file()


# ----------------------------------------------------------------------------------------------
# The lock: one writer per run folder and per sweep folder


def _holder(command: list[str], lock: Path) -> subprocess.Popen:
    """A live process running ``command``, once it holds ``lock`` (its pid written there)."""
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (lock.is_file() and lock.read_text().strip() == str(process.pid)):
        assert process.poll() is None, process.stderr.read()[-2000:]
        assert time.monotonic() < deadline, "the process did not take the lock"
        time.sleep(0.1)
    return process


@pytest.mark.slow
def test_a_live_run_refuses_a_second_writer_and_overwrite(tmp_path, capsys):
    """Two live processes: `badit train` training (2000 steps) holds RUN/.lock; `--resume` of the same run
    and `--overwrite` with another config are refused in one line naming its pid, nothing of it deleted."""
    config = tiny_run_config(
        tmp_path, "lora", training={"max_steps": 2000, "save_steps": 1000}, evaluation=EVAL
    )
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    run_dir = Path(config["output_dir"])
    live = _holder([sys.executable, "-m", "badit.cli.main", "train", str(path)], run_dir / LOCK_FILE)
    try:
        expected = (
            f"error: {run_dir}: another badit process (pid {live.pid}) is writing this run; wait until it ends "
            "(or stop it), then rerun"
        )
        assert _one_error_line(capsys, ["train", str(path), "--resume"]) == f"badit train: {expected}"
        other = tmp_path / "other.yaml"
        other.write_text(yaml.safe_dump({**config, "seed": 1}))
        assert _one_error_line(capsys, ["train", str(other), "--overwrite"]) == f"badit train: {expected}"
        assert _one_error_line(capsys, ["eval", str(run_dir)]) == f"badit eval: {expected}"
        assert (
            live.poll() is None and (run_dir / "config.yaml").is_file() and (run_dir / MARKER_FILE).is_file()
        )
    finally:
        live.kill()
        live.wait()
    with RunLock(run_dir):  # the kernel dropped the killed holder's lock: no stale lock blocks
        pass


@pytest.mark.slow
def test_a_second_sweep_into_one_folder_is_refused(tmp_path, capsys):
    from badit.experiments.sweep import load_sweep, run_sweep

    sweep_file = write_sweep(tmp_path, tiny_run_config(tmp_path, "lora"))
    folder = tmp_path / "sweep"
    hold = "import sys, time; from badit.experiments.folder import RunLock; RunLock(sys.argv[1]).acquire(); time.sleep(600)"
    live = _holder([sys.executable, "-c", hold, str(folder)], folder / LOCK_FILE)
    try:
        line = _one_error_line(capsys, ["sweep", str(sweep_file)])
        assert line == (
            f"badit sweep: error: {folder}: another badit process (pid {live.pid}) is writing this sweep; wait "
            "until it ends (or stop it), then rerun"
        )

        def must_not_train(sweep, job, gpu):
            raise AssertionError("a run started")

        with pytest.raises(RunError):
            run_sweep(load_sweep(sweep_file), echo=lambda *a, **k: None, runner=must_not_train)
    finally:
        live.kill()
        live.wait()


# ----------------------------------------------------------------------------------------------
# A sweep: half-finished runs are completed, its runs stop with it


def test_a_sweep_completes_a_run_killed_before_its_summary(tmp_path):
    """metrics.json without summary.md (killed inside write_results, or a multitask run killed after its
    evaluation wrote metrics.json): not finished, so rerunning the sweep resumes it; a complete run is
    skipped."""
    from badit.experiments.sweep import Progress, load_sweep, plan_selection, run_jobs

    sweep_file = write_sweep(tmp_path, "name: base\n", learning_rates=[1e-4, 3e-4])
    sweep = load_sweep(sweep_file)
    half, complete = plan_selection(sweep)
    for job in (half, complete):
        folder = job.run_dir(sweep)
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text("{}")
    (complete.run_dir(sweep) / "summary.md").write_text("# done\n")
    trained = []
    run_jobs(
        sweep,
        [half, complete],
        Progress(2, 0, echo=lambda *a, **k: None),
        lambda s, job, gpu: trained.append(job),
    )
    assert trained == [half]


def test_no_run_starts_after_a_sweep_run_fails(tmp_path):
    """A failed run (or one killed by a stop) ends the sweep at once: the pool's worker, free the moment
    the run fails, starts no other (before, it took the next job before the sweep could cancel it, and a
    stopped sweep trained one more run to the end before it exited)."""
    from badit.experiments.sweep import Progress, SweepError, load_sweep, plan_selection, run_jobs

    sweep = load_sweep(write_sweep(tmp_path, "name: base\n", learning_rates=[1e-4, 3e-4, 1e-3]))
    jobs = plan_selection(sweep)
    started = []

    def runner(sweep, job, gpu):
        started.append(job.name)
        if len(started) == 1:
            time.sleep(0.2)  # the others wait in the pool's queue meanwhile
            raise SweepError(f"run {job.name} failed (exit code -15)")

    with pytest.raises(SweepError, match="lr0.0001 failed"):
        run_jobs(sweep, jobs, Progress(len(jobs), 0, echo=lambda *a, **k: None), runner)
    assert started == [jobs[0].name] and len(jobs) == 3


@pytest.mark.slow
def test_stopping_a_sweep_stops_its_running_train_process(tmp_path):
    """Two live processes: `badit sweep` and its `badit train` child (in a process group of its own).
    SIGTERM to the sweep only: the child is stopped too (before issue 20 it trained on)."""
    # 2 examples per task scored: a sweep refuses fewer (no interval), before any run starts
    config = tiny_run_config(
        tmp_path,
        "lora",
        training={"max_steps": 2000, "save_steps": 1000},
        evaluation={**EVAL, "max_examples_per_task": 2},
    )
    sweep_file = write_sweep(tmp_path, config)
    parent = subprocess.Popen(
        [sys.executable, "-m", "badit.cli.main", "sweep", str(sweep_file)],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lock = tmp_path / "sweep" / "select" / "lora-lr0.0001" / LOCK_FILE
        deadline = time.monotonic() + 180
        while not (lock.is_file() and lock.read_text().strip().isdigit()):  # the child trains
            assert parent.poll() is None, parent.stderr.read()[-2000:]
            assert time.monotonic() < deadline, "the sweep's run did not start"
            time.sleep(0.1)
        child = int(lock.read_text())
        assert child != parent.pid and _alive(child)
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(timeout=60) == 128 + signal.SIGTERM
        deadline = time.monotonic() + 30
        while _alive(child):
            assert time.monotonic() < deadline, f"the run {child} still trains after its sweep was stopped"
            time.sleep(0.1)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (ended, not yet reaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


# ----------------------------------------------------------------------------------------------
# Text from run folders and data reaches the terminal and Markdown without control characters

ANSI = "\x1b]0;owned\x07\x1b[2J\x1b[31m"  # set the terminal's title, clear the screen, red
HOSTILE = f"t{ANSI}<script>alert(1)</script>\r"


def test_names_with_terminal_escapes_are_made_harmless(tmp_path, capsys):
    """A run name, task names and a config value with ANSI escapes (issue 20 item 9): none of the
    control characters reaches stdout, stderr, summary.md or `badit compare`'s Markdown; `<script>` in
    Markdown is escaped (the table type, badit.experiments.results); a figure's texts are stripped too."""
    import logging

    from badit.cli.main import _printable_record
    from badit.experiments.results import summary_table

    config = from_dict(tiny_run_config(tmp_path, "lora", name=f"run{ANSI}"))
    run = RunFolder(tmp_path / "run")
    run.path.mkdir()
    run.write_results(config, {"tasks": {HOSTILE: SCORES}, "average": SCORES}, {})
    summary = run.summary_file.read_text()
    assert "\x1b" not in summary and "\r" not in summary and "<script>" not in summary
    assert "\\<script\\>" in summary  # shown as text
    (run.path / "config.yaml").write_text(json.dumps({"name": "run", "training": {"learning_rate": 1e-4}}))
    capsys.readouterr()
    assert main(["compare", str(run.path), "--output", str(tmp_path / "table.md")]) == 0
    out = capsys.readouterr()
    for text in (out.out, out.err, (tmp_path / "table.md").read_text()):
        assert "\x1b" not in text and "\x07" not in text and "<script>" not in text
    assert "\x1b" not in summary_table({"tasks": {HOSTILE: SCORES}, "average": SCORES}, f"title{ANSI}")
    # an error line naming a value from the command line or a file, and a log line naming a task
    line = _one_error_line(capsys, ["train", str(tmp_path / f"missing{ANSI}.yaml")])
    assert "\x1b" not in line and "\x07" not in line and line.endswith("no such config file")
    record = logging.LogRecord("badit", logging.WARNING, __file__, 1, "task %s", (HOSTILE,), None)
    assert _printable_record(record) and "\x1b" not in record.getMessage()


def test_figure_texts_lose_their_control_characters():
    from badit.analysis.plots import heatmap_figure, printable_texts, pyplot

    fig = heatmap_figure([[1.0]], [HOSTILE], [HOSTILE], f"title{ANSI}")
    printable_texts(fig)
    texts = [t.get_text() for t in fig.findobj(__import__("matplotlib").text.Text)]
    assert any("script" in t for t in texts) and not any(c in t for t in texts for c in "\x1b\x07\r")
    # tick labels are made again when the figure is drawn (issue 33: matplotlib's missing-glyph warning
    # then printed the raw ESC / BEL): drawn, the figure neither warns nor shows a control character
    import io
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fig.savefig(io.BytesIO(), format="png")
    drawn = [t.get_text() for t in fig.axes[0].get_xticklabels() + fig.axes[0].get_yticklabels()]
    assert any("script" in t for t in drawn) and not any(c in t for t in drawn for c in "\x1b\x07\r")
    assert not any(c in str(w.message) for w in caught for c in "\x1b\x07\r"), [
        str(w.message) for w in caught
    ]
    pyplot().close(fig)
