"""The command answers --help and --version without importing torch; `import badit` stays light and
still registers BADIT with PEFT by the time PEFT is used."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
