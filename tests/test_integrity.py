"""Manifests (sizes + sha256) and finite weights on load; which checkpoint a resume picks and what it skips."""

from __future__ import annotations

import json
import logging
import math
import signal

import pytest
import torch
from peft import get_peft_model
from safetensors.torch import load_file, save_file

import badit
from badit.adapter.integrity import (
    MANIFEST_FILE,
    IntegrityError,
    check_adapter_folder,
    manifest_problem,
    write_manifest,
)
from badit.training import checkpoints
from badit.training.checkpoints import CheckpointError, resumable_checkpoint, seal, staged_write
from badit.training.trainer import build_adapter_model
from tests.helpers import make_tiny_model


def _saved_adapter(folder):
    model = get_peft_model(make_tiny_model(), badit.BaditConfig(regroup=False))
    model.save_pretrained(folder)
    return folder


def _overwrite(path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def test_manifest_lists_sizes_and_sha256(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"abc")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.bin").write_bytes(b"")
    manifest = write_manifest(tmp_path)
    # sha256("abc") and sha256("") are the FIPS 180-2 test vectors
    assert manifest["files"] == {
        "a.txt": {"bytes": 3, "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
        "sub/b.bin": {
            "bytes": 0,
            "sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        },
    }
    assert json.loads((tmp_path / MANIFEST_FILE).read_text()) == manifest
    assert manifest_problem(tmp_path) is None
    (tmp_path / "a.txt").write_bytes(b"abd")  # same size, other bytes
    assert (
        manifest_problem(tmp_path)
        == f"{tmp_path / 'a.txt'} does not match its sha256 in {MANIFEST_FILE} (damaged or overwritten)"
    )
    (tmp_path / "a.txt").write_bytes(b"ab")
    assert manifest_problem(tmp_path) == f"{tmp_path / 'a.txt'} has 2 bytes, the manifest says 3"
    (tmp_path / "a.txt").unlink()
    assert manifest_problem(tmp_path) == f"{tmp_path / 'a.txt'} is missing"


def test_4kb_of_0xff_in_an_adapter_is_refused_on_load(tmp_path):
    folder = _saved_adapter(tmp_path / "adapter")
    write_manifest(folder)
    weights = folder / "adapter_model.safetensors"
    size = weights.stat().st_size
    _overwrite(weights, size - 4096 - 8, b"\xff" * 4096)
    assert weights.stat().st_size == size
    expected = (
        f"{weights} does not match its sha256 in {MANIFEST_FILE} (damaged or overwritten): the adapter is "
        "damaged; rerun training with --resume (or retrain the run) to write it again"
    )
    with pytest.raises(IntegrityError) as error:
        check_adapter_folder(folder)
    assert str(error.value) == expected
    with pytest.raises(IntegrityError, match="does not match its sha256"):  # a continual stage's init adapter
        build_adapter_model(make_tiny_model(), None, seed=0, init_adapter=folder)
    # without the manifest the same bytes are NaN floats (0xFFFFFFFF): the finite check still refuses them
    (folder / MANIFEST_FILE).unlink()
    with pytest.raises(
        IntegrityError, match=r"adapter_model\.safetensors: tensor .* holds NaN or inf values"
    ):
        check_adapter_folder(folder)


def test_a_nan_tensor_without_manifest_is_named(tmp_path):
    folder = _saved_adapter(tmp_path / "adapter")
    weights = folder / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    name = "base_model.model.model.layers.1.mlp.gate_proj.badit_router.weight"
    tensors[name][0, 3] = math.nan
    save_file(tensors, str(weights), metadata={"format": "pt"})
    with pytest.raises(IntegrityError) as error:
        build_adapter_model(make_tiny_model(), None, seed=0, init_adapter=folder)
    assert str(error.value).startswith(f"{weights}: tensor {name} holds NaN or inf values: ")


def test_a_truncated_adapter_without_manifest_is_refused(tmp_path):
    folder = _saved_adapter(tmp_path / "adapter")
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(
        IntegrityError, match=r"not a readable safetensors file \(.*\): the adapter is damaged; rerun"
    ):
        check_adapter_folder(folder)


def _checkpoint(folder, manifest: bool = True, skip: tuple[str, ...] = ()):
    folder.mkdir(parents=True)
    files = {
        "trainer_state.json": b"{}",
        "optimizer.pt": b"o" * 64,
        "scheduler.pt": b"s",
        "rng_state.pth": b"r",
    }
    for name, data in files.items():
        if name not in skip:
            (folder / name).write_bytes(data)
    save_file({"w": torch.ones(2)}, str(folder / "adapter_model.safetensors"))
    if manifest:
        write_manifest(folder)
    return folder


def test_resume_takes_the_newest_checkpoint_that_verifies(tmp_path, caplog):
    good = _checkpoint(tmp_path / "checkpoint-4")
    _overwrite(_checkpoint(tmp_path / "checkpoint-8") / "optimizer.pt", 10, b"\xff" * 4)
    _checkpoint(
        tmp_path / "checkpoint-12", manifest=False, skip=("trainer_state.json",)
    )  # a half-written one
    with caplog.at_level(logging.WARNING, logger="badit"):
        assert resumable_checkpoint(tmp_path) == good
    assert [r.getMessage() for r in caplog.records] == [
        f"skipping checkpoint checkpoint-12: {tmp_path / 'checkpoint-12' / 'trainer_state.json'} is missing "
        "(an unfinished checkpoint)",
        f"skipping checkpoint checkpoint-8: {tmp_path / 'checkpoint-8' / 'optimizer.pt'} does not match its "
        f"sha256 in {MANIFEST_FILE} (damaged or overwritten): resume from an older checkpoint (delete this one) "
        "or retrain",
    ]


def test_a_checkpoint_of_an_older_badit_is_taken_with_a_warning(tmp_path, caplog):
    old = _checkpoint(tmp_path / "checkpoint-4", manifest=False)
    with caplog.at_level(logging.WARNING, logger="badit"):
        assert resumable_checkpoint(tmp_path) == old
    assert "has no badit-manifest.json (written by an older badit)" in caplog.text
    # without the optimizer Trainer cannot resume it, unless the run saves the model only
    (old / "optimizer.pt").unlink()
    assert resumable_checkpoint(tmp_path, needs_optimizer=False) == old
    with pytest.raises(CheckpointError, match=r"no usable checkpoint in .* \(checkpoint-4 damaged"):
        resumable_checkpoint(tmp_path)


def test_no_checkpoint_means_training_from_the_start(tmp_path):
    assert resumable_checkpoint(tmp_path / "absent") is None
    (tmp_path / ".staging" / "checkpoint-4").mkdir(parents=True)  # staging folders are not checkpoints
    assert resumable_checkpoint(tmp_path) is None


def test_seal_replaces_an_existing_folder_whole(tmp_path):
    final = tmp_path / "adapter"
    final.mkdir()
    (final / "old.txt").write_text("old")
    staging = tmp_path / ".adapter.tmp"
    with staged_write(staging):
        (staging / "new.txt").write_text("new")
        seal(staging, final)
    assert sorted(p.name for p in final.iterdir()) == [MANIFEST_FILE, "new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_kill_point_reads_the_point_and_step(monkeypatch):
    kills = []
    monkeypatch.setattr(checkpoints.os, "kill", lambda pid, sig: kills.append(sig))
    monkeypatch.setenv(checkpoints.KILL_ENV, "checkpoint-write:8")
    checkpoints.kill_point("checkpoint-write", 4)
    checkpoints.kill_point("after-trainer-state", 8)
    assert kills == []
    checkpoints.kill_point("checkpoint-write", 8)
    monkeypatch.setenv(checkpoints.KILL_ENV, "final-save")
    checkpoints.kill_point("final-save")
    assert kills == [signal.SIGKILL, signal.SIGKILL]


def test_the_cli_reports_a_damaged_adapter_in_one_line(tmp_path, capsys):
    from badit.cli.main import main
    from tests.helpers import save_tiny_model

    base = save_tiny_model(tmp_path / "base")
    model = get_peft_model(make_tiny_model(), badit.BaditConfig(regroup=False))
    model.peft_config["default"].base_model_name_or_path = str(base)
    folder = tmp_path / "adapter"
    model.save_pretrained(folder)
    write_manifest(folder)
    weights = folder / "adapter_model.safetensors"
    _overwrite(weights, weights.stat().st_size - 4096 - 8, b"\xff" * 4096)
    capsys.readouterr()  # the progress bars of the saves above
    assert main(["export", str(folder), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"badit export: error: {weights} does not match its sha256 in {MANIFEST_FILE} (damaged or overwritten): "
        "the adapter is damaged; rerun training with --resume (or retrain the run) to write it again"
    )
    assert not (tmp_path / "out").exists()
