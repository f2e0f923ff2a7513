"""docs/reliability.md cannot drift from the suite: every ``tests/...py::name`` it mentions exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "reliability.md"
REFERENCE = re.compile(r"(tests/[\w/]+\.py)::([\w:]+)")
"""``tests/test_x.py::test_name`` or ``tests/test_x.py::TestClass::test_name`` (a ``[param]`` suffix is ignored)."""


def defined_tests(path: Path) -> set[str]:
    """The test ids of a test file without parameters: ``name`` and ``Class::name``."""
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            names.update(
                f"{node.name}::{item.name}"
                for item in node.body
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))
            )
    return names


def missing_references(text: str, root: Path = ROOT) -> list[str]:
    """The ``file::name`` references of ``text`` whose file or test does not exist under ``root``."""
    missing = []
    for file, name in REFERENCE.findall(text):
        path = root / file
        if not path.is_file() or name not in defined_tests(path):
            missing.append(f"{file}::{name}")
    return missing


def test_the_checker_finds_a_missing_test_and_accepts_existing_ones(tmp_path):
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_a.py").write_text(
        "def test_one():\n    pass\n\nclass TestGroup:\n    def test_two(self):\n        pass\n"
    )
    text = (
        "`tests/test_a.py::test_one`, `tests/test_a.py::TestGroup::test_two`, "
        "`tests/test_a.py::test_one[lora]`, `tests/test_a.py::test_gone`, `tests/test_b.py::test_one`"
    )
    assert missing_references(text, tmp_path) == ["tests/test_a.py::test_gone", "tests/test_b.py::test_one"]


def test_every_test_named_in_reliability_md_exists():
    assert missing_references(PAGE.read_text(encoding="utf-8")) == []
