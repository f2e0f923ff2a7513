"""Crash safety: a real `badit train` process SIGKILLed at named points (inside a checkpoint write, after
trainer_state.json but before the regroup state, inside the final save) and resumed ends bitwise equal to
the uninterrupted run; checkpoints appear only complete; a full disk leaves the last checkpoint usable."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import TrainerCallback

from badit.training.checkpoints import KILL_ENV
from tests.helpers import tiny_run_config

ROOT = Path(__file__).resolve().parents[1]

# 2 tasks x 16 examples, batch 4: 8 steps per epoch, 12 steps, checkpoints at 4, 8, 12. BADIT regroups at
# the end of epoch 1 (step 8, regroup_until=1.0), which Trainer runs after the checkpoint of step 8 is saved.
SECTIONS = dict(
    data={"max_train_examples_per_task": 16},
    method={"regroup_every": "epoch", "regroup_until": 1.0, "lora_dropout": 0.1},
    # a constant learning rate: with a decaying one the lr of a 13th step is 0, so a step past max_steps (12
    # is not a multiple of the 8 steps of an epoch: issue 20) would leave the adapter unchanged
    training={"max_steps": 12, "save_steps": 4, "save_total_limit": None, "lr_scheduler_type": "constant"},
    evaluation={"max_examples_per_task": 1, "max_new_tokens": 2},
)


def _config(tmp_path: Path, method: str, name: str) -> Path:
    config = tiny_run_config(tmp_path, method, output_dir=str(tmp_path / name), **SECTIONS)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _train(config: Path, *options: str, kill: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop(KILL_ENV, None)
    if kill:
        env[KILL_ENV] = kill
    return subprocess.run(
        [sys.executable, "-m", "badit.cli.main", "train", str(config), *options],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


def _run_info(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())["run"]


def _different(run_dir: Path, whole: Path) -> list[str]:
    tensors, expected = _adapter(run_dir), _adapter(whole)
    assert tensors.keys() == expected.keys() != set()
    return [key for key in tensors if not torch.equal(tensors[key], expected[key])]


def _regroups(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "logs" / "regroup.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The shared folder with model and data, and the uninterrupted BADIT run's folder. (The LoRA family's
    resume, without regroup state, is tested in-process: tests/test_training_runs.py.)"""
    root = tmp_path_factory.mktemp("crash")
    result = _train(_config(root, "badit", "whole-badit"))
    assert result.returncode == 0, result.stderr[-2000:]
    return root, root / "whole-badit"


# (method, kill point, the checkpoints visible after the kill; the resumed run starts from the last)
KILLS = [
    # inside the write of checkpoint 12 (adapter written, optimizer not): resume from 8, whose epoch-end
    # regroup is still pending (it ran after the checkpoint was saved)
    ("badit", "checkpoint-write:12", ["checkpoint-4", "checkpoint-8"]),
    # after trainer_state.json of checkpoint 8, before its regroup state: resume from 4
    ("badit", "after-trainer-state:8", ["checkpoint-4"]),
    # inside the final save (adapter files written, not renamed): resume from 12 = max_steps, train nothing
    # (before issue 20: a 13th step that changed every adapter tensor), save
    ("badit", "final-save", ["checkpoint-4", "checkpoint-8", "checkpoint-12"]),
]


@pytest.mark.slow
@pytest.mark.parametrize(("method", "kill", "visible"), KILLS, ids=[f"{m}-{k}" for m, k, _ in KILLS])
def test_killed_run_resumes_bitwise(uninterrupted, method, kill, visible):
    root, whole = uninterrupted
    name = f"killed-{method}-{kill.replace(':', '-')}"
    config = _config(root, method, name)
    killed = _train(config, kill=kill)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    checkpoints = root / name / "checkpoints"
    assert sorted((p.name for p in checkpoints.glob("checkpoint-*")), key=lambda n: (len(n), n)) == visible
    assert not (root / name / "adapter").exists()
    if kill == KILLS[0][1]:  # a plain rerun of the killed run is refused (in-process: no new interpreter)
        from badit.cli.main import main

        assert main(["train", str(config)]) == 2

    before = json.loads((checkpoints / visible[-1] / "run_totals.json").read_text())
    resumed = _train(config, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming from {checkpoints / visible[-1]}" in resumed.stderr  # the newest complete one
    assert not (checkpoints / ".staging").exists()
    different = _different(root / name, whole)
    assert not different, different[:5]
    # the whole run's numbers, not the resumed part's: the same steps, loss and tokens as without the kill
    # (loss summed in another order: 1e-6), the time of both parts (the killed part's is in the checkpoint)
    info, reference_info = _run_info(root / name), _run_info(whole)
    assert info["global_step"] == reference_info["global_step"] == 12
    assert info["train_loss"] == pytest.approx(reference_info["train_loss"], rel=1e-6)
    assert info["tokens_seen"] == reference_info["tokens_seen"] > 0
    step = int(visible[-1].split("-")[1])
    assert (before["steps"], before["parts"]) == (step, 1)
    assert info["train_parts"] == (1 if step == 12 else 2)  # a part that trains no step is not counted
    assert info["train_seconds"] >= round(before["seconds"], 2) > 0
    if kill == "final-save":
        # a finished run resumed (to re-evaluate it) trains nothing: the same adapter, step and loss again
        again = _train(config, "--resume")
        assert again.returncode == 0, again.stderr[-2000:]
        assert not _different(root / name, whole)
        info = _run_info(root / name)
        assert (info["global_step"], info["train_parts"]) == (12, 1)
        assert info["train_loss"] == pytest.approx(reference_info["train_loss"], rel=1e-6)
    # The regroup at step 8 (redone after a resume from 4 or 8) saw the uninterrupted run's gradient sums,
    # those before the checkpoint restored from it.
    (reference,) = _regroups(whole)
    last = _regroups(root / name)[-1]
    assert last["step"] == reference["step"] == 8
    assert last["layers"].keys() == reference["layers"].keys() != set()
    for layer, stats in reference["layers"].items():
        assert last["layers"][layer] == pytest.approx(stats, rel=1e-6), layer


@pytest.mark.slow
def test_disk_full_during_a_checkpoint_leaves_the_last_one_usable(tmp_path, monkeypatch):
    from transformers import trainer as hf_trainer

    from badit.experiments.config import from_dict
    from badit.experiments.settings import run
    from badit.training.checkpoints import DiskFullError, checkpoint_problem, resumable_checkpoint

    config = from_dict(tiny_run_config(tmp_path, "badit", **SECTIONS))
    real_save = torch.save

    def save(obj, path, *args, **kwargs):  # the optimizer of checkpoint 8 does not fit on the disk
        if str(path).endswith(f"checkpoint-8{os.sep}optimizer.pt"):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(hf_trainer.torch, "save", save)
    with pytest.raises(DiskFullError) as error:
        run(config)
    staging = Path(config.output_dir) / "checkpoints" / ".staging"
    assert str(error.value) == (
        f"disk full while writing {staging / 'checkpoint-8' / 'optimizer.pt'}: free space and rerun with --resume"
    )
    checkpoints = Path(config.output_dir) / "checkpoints"
    assert [p.name for p in checkpoints.iterdir()] == ["checkpoint-4"]  # the staging folder is gone
    assert checkpoint_problem(checkpoints / "checkpoint-4") is None
    assert resumable_checkpoint(checkpoints) == checkpoints / "checkpoint-4"


class _DiskFillsUp:
    """A model whose save_pretrained fills the disk after writing part of its weights."""

    def save_pretrained(self, folder: str) -> None:
        path = Path(folder) / "adapter_model.safetensors"
        path.write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))


def test_disk_full_during_the_final_save_keeps_the_previous_adapter(tmp_path):
    from badit.training.checkpoints import DiskFullError
    from badit.training.trainer import save_adapter
    from tests.helpers import char_tokenizer

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"previous")
    with pytest.raises(DiskFullError) as error:
        save_adapter(_DiskFillsUp(), char_tokenizer(), adapter)
    partial = tmp_path / ".adapter.tmp" / "adapter_model.safetensors"
    assert str(error.value) == f"disk full while writing {partial}: free space and rerun with --resume"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # no staging folder left
    assert (adapter / "adapter_model.safetensors").read_bytes() == b"previous"


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        RuntimeError(
            "[enforce fail at inline_container.cc:664] . unexpected pos 128 vs 64: file write failed"
        ),
        # torch 2.13 on a full 20 MB tmpfs (issue 20): neither names the failed write
        RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0"),
        RuntimeError("basic_ios::clear: iostream error"),
        # safetensors names no file and no errno attribute, only the text of the OS error
        "Error while serializing: I/O error: No space left on device (os error 28)",
    ],
    ids=["oserror", "torch", "torch-pos", "torch-iostream", "safetensors"],
)
def test_each_library_s_disk_full_error_becomes_disk_full_error(tmp_path, error):
    from safetensors import SafetensorError

    from badit.training.checkpoints import DiskFullError, staged_write

    error = SafetensorError(error) if isinstance(error, str) else error
    staging = tmp_path / ".staging" / "checkpoint-8"
    with pytest.raises(DiskFullError) as raised:
        with staged_write(staging):
            raise error
    assert str(raised.value) == f"disk full while writing {staging}: free space and rerun with --resume"
    assert list(tmp_path.iterdir()) == []  # the staging folder and its empty parent are gone


def test_other_write_errors_pass_through_and_clean_up(tmp_path):
    from badit.training.checkpoints import staged_write

    staging = tmp_path / ".adapter.tmp"
    with pytest.raises(PermissionError):
        with staged_write(staging):
            raise PermissionError(errno.EACCES, "Permission denied")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------------
# A real full disk: a 20 MB tmpfs filled up while training runs on it


@pytest.fixture
def small_disk(tmp_path):
    """A 20 MB tmpfs mounted under tmp_path (skipped where mounting is not permitted)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(disk)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


class _FillDisk(TrainerCallback):
    """At the log of step ``step`` (just before its checkpoint is written) fills the disk with one file,
    leaving the space of the checkpoint's model files (measured on the checkpoint of step 2, in blocks) and
    ``spare`` bytes: the checkpoint's optimizer.pt, written next by torch.save, then hits ENOSPC."""

    MODEL_FILES = {"adapter_model.safetensors", "adapter_config.json", "README.md", "tokenizer.json"}

    def __init__(self, disk: Path, step: int, spare: int):
        self.disk, self.step, self.spare = disk, step, spare

    def on_log(self, args, state, control, **kwargs):
        if state.global_step != self.step:
            return
        previous = Path(args.output_dir) / "checkpoint-2"
        model_files = [
            p for p in previous.iterdir() if p.name in self.MODEL_FILES or p.name.startswith("tok")
        ]
        needed = sum(p.stat().st_blocks * 512 for p in model_files)
        stat = os.statvfs(self.disk)
        fd = os.open(self.disk / "filler", os.O_CREAT | os.O_WRONLY)
        try:
            os.posix_fallocate(fd, 0, stat.f_bavail * stat.f_frsize - needed - self.spare)
        finally:
            os.close(fd)


@pytest.mark.slow
def test_a_real_full_disk_during_torch_save_is_one_line_and_resumable(
    small_disk, tmp_path, capsys, monkeypatch
):
    """torch.save's failed write is a RuntimeError without errno ("unexpected pos" or "iostream error", as
    on a 20 MB tmpfs): recognised as a full disk, one line, exit 2, checkpoint 2 kept and resumed."""
    import badit.experiments.settings as settings
    from badit.cli.main import main
    from badit.errors import TORCH_WRITE_FAILURES

    config = tiny_run_config(
        tmp_path,
        "lora",
        output_dir=str(small_disk / "run"),
        training={"max_steps": 6, "save_steps": 2},
        evaluation={"max_examples_per_task": 1, "max_new_tokens": 2},
    )
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    seen = []
    real_run = settings.run

    def run_filling_the_disk(*args, **kwargs):
        try:
            return real_run(*args, **kwargs, extra_callbacks=[_FillDisk(small_disk, step=4, spare=0)])
        except Exception as error:
            seen.append(error)
            raise

    monkeypatch.setattr(settings, "run", run_filling_the_disk)
    capsys.readouterr()
    assert main(["train", str(path)]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    staging = small_disk / "run" / "checkpoints" / ".staging" / "checkpoint-4"
    assert lines == [
        f"badit train: error: disk full while writing {staging}: free space and rerun with --resume"
    ]
    torch_error = seen[0].__cause__  # what torch.save said: no errno, no file name
    assert type(torch_error) is RuntimeError and any(m in str(torch_error) for m in TORCH_WRITE_FAILURES)
    checkpoints = small_disk / "run" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-2"]  # the staging folder is gone

    monkeypatch.setattr(settings, "run", real_run)
    (small_disk / "filler").unlink()
    assert main(["train", str(small_disk / "run"), "--resume"]) == 0
    info = json.loads((small_disk / "run" / "metrics.json").read_text())["run"]
    assert (info["global_step"], info["train_parts"]) == (6, 2)


def test_a_full_disk_while_logging_names_the_log(small_disk):
    """The JSONL logs (train_log, regroup, router health) name their file when the disk is full (a failed
    write names none): the CLI's one line says which file."""
    from badit.errors import os_error_message
    from badit.training.callbacks import JsonlLogger

    log = small_disk / "logs" / "train_log.jsonl"
    log.parent.mkdir()
    stat = os.statvfs(small_disk)
    fd = os.open(small_disk / "filler", os.O_CREAT | os.O_WRONLY)
    os.posix_fallocate(fd, 0, stat.f_bavail * stat.f_frsize)  # every block
    os.close(fd)
    state = type("State", (), {"is_world_process_zero": True, "global_step": 3, "epoch": 0.5})()
    with pytest.raises(OSError) as error:
        JsonlLogger(log).on_log(None, state, None, logs={"loss": 1.0})
    assert (error.value.errno, error.value.filename) == (errno.ENOSPC, str(log))
    assert os_error_message(error.value).startswith(f"disk full while writing {log}; free some space")
