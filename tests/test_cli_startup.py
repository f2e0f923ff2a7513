"""The command answers --help and --version, and reports a config error, without importing torch;
`import badit` stays light and still registers BADIT with PEFT by the time PEFT is used."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import badit

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "peft", "datasets")


def run_python(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300, check=True
    )
    return result.stdout


def test_help_of_every_command_imports_no_heavy_library():
    code = f"""
import argparse, json, sys
from badit.cli.main import build_parser

def helps(parser):
    parser.format_help()
    yield parser.prog
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from helps(sub)

print(json.dumps([list(helps(build_parser())), [m for m in {HEAVY!r} if m in sys.modules]]))
"""
    progs, heavy = json.loads(run_python(code))
    commands = ["train", "eval", "compare", "analyze", "data", "data check", "demo"]
    assert set(progs) >= {"badit", *(f"badit {c}" for c in commands)}
    assert heavy == []


def test_version():
    out = subprocess.run(
        [sys.executable, "-m", "badit.cli.main", "--version"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and out.stdout == f"badit {badit.__version__}\n"


def test_import_badit_is_light_and_registers_when_peft_is_imported():
    code = """
import json, sys
import badit
light = [m for m in ("torch", "peft") if m in sys.modules]
from peft import PeftType
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
print(json.dumps([light, PeftType.BADIT.value, PEFT_TYPE_TO_CONFIG_MAPPING[PeftType.BADIT].__name__]))
"""
    assert json.loads(run_python(code)) == [[], "BADIT", "BaditConfig"]
    assert badit.BaditConfig.__module__ == "badit.adapter.config"  # first use of a name loads it


@pytest.mark.parametrize(
    "config, message",
    [
        ("setting: multitsk\n", "setting 'multitsk' is unknown; use one of multitask, single, continual"),
        ("method: {name: lroa}\n", "method.name 'lroa' is unknown (did you mean 'lora'?)"),
        ("data: {format: xml}\n", "data.format 'xml' is unknown"),
        ("training: {learning_rate: -1}\n", "training.learning_rate must be positive, got -1.0"),
        ("trainig: {max_steps: 2}\n", "unknown field 'trainig'; did you mean 'training'?"),
        ("training: [max_steps\n", "invalid YAML at line 2, column 1"),
    ],
)
def test_a_config_error_is_one_line_before_torch_is_imported(tmp_path, config, message):
    # `python -m badit.cli.main train bad.yaml` as run from a shell; the heavy libraries loaded by then
    # are printed by an exit hook (a config error used to take 10-14 s: importing the config loaded torch).
    path = tmp_path / "bad.yaml"
    path.write_text(config)
    code = f"""
import atexit, json, runpy, sys
atexit.register(lambda: print(json.dumps([m for m in {HEAVY!r} if m in sys.modules])))
sys.argv = ["badit", "train", {str(path)!r}]
runpy.run_module("badit.cli.main", run_name="__main__")
"""
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"badit train: error: {path}: {message}"), line
    assert json.loads(result.stdout) == []


def test_every_name_has_its_implementation():
    # The names a config is checked against (badit.names, torch-free) and the code behind them.
    from badit.data.sources import FORMATS
    from badit.evaluation.scoring import score_example
    from badit.experiments.settings import SETTINGS
    from badit.names import DATA_FORMATS, METHODS, METRICS
    from badit.names import SETTINGS as SETTING_NAMES
    from badit.training.methods import MethodConfig, build_peft_config

    assert tuple(SETTINGS) == SETTING_NAMES
    assert FORMATS is DATA_FORMATS
    for name in METHODS:
        assert set(build_peft_config(MethodConfig(name=name)).target_modules) == {"gate_proj"}, name
    scored = score_example({"prediction": "a b", "references": ["a b"]})
    assert {m: scored[m] for m in METRICS} == {"rougeL": 100.0, "exact_match": 100.0}
