"""The package graph: every import between badit's packages (read from the source with ast, imports
inside functions included) goes downwards, so the graph has no upward edge and no cycle."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import badit

ROOT = Path(__file__).resolve().parents[1] / "badit"

LEAVES = ("errors", "lazy", "names", "outputs")
"""Top-level modules below every package: the error base class, the name lists and the rule for
``--output`` folders. They import only
the standard library (no torch) and each other, so any package may import them."""

LAYERS = [
    *LEAVES,
    "regrouping",  # below the adapter: BaditModel attaches gradient tracking when it is built
    "adapter",
    "data",
    "evaluation",
    "analysis",
    "training",
    "experiments",
    "cli",
]
"""Lowest first: a package may import only the packages before it."""


def _package_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "badit" else None


def _targets(node: ast.AST) -> list[str]:
    """The modules an import statement loads; ``from badit import Name`` is the module the facade
    takes ``Name`` from (``badit._EXPORTS``) or the subpackage ``Name``."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom) or node.level != 0 or not node.module:
        return []
    if node.module != "badit":
        return [node.module]
    return [badit._EXPORTS.get(alias.name, f"badit.{alias.name}") for alias in node.names]


def package_edges(root: Path = ROOT) -> dict[tuple[str, str], str]:
    """{(importing package, imported package): "file:line" of one such import} between badit's packages."""
    edges = {}
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if len(relative.parts) < 2:
            continue  # badit/__init__.py: the top-level facade, names loaded lazily by name
        source = relative.parts[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            for target in _targets(node):
                package = _package_of(target)
                if package in (None, "__version__") or package == source:
                    continue
                edges.setdefault((source, package), f"{relative}:{node.lineno}")
    return edges


def test_every_package_is_in_a_layer():
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    modules = {p.stem for p in ROOT.glob("*.py")} - {"__init__"}
    assert packages | modules == set(LAYERS) and modules == set(LEAVES)


def test_the_leaf_modules_import_nothing_but_the_standard_library():
    leaves = {f"badit.{leaf}" for leaf in LEAVES}
    for name in LEAVES:
        tree = ast.parse((ROOT / f"{name}.py").read_text(encoding="utf-8"))
        targets = {t for node in ast.walk(tree) for t in _targets(node)}
        imported = {t.split(".")[0] for t in targets - leaves}  # a leaf may use another (the error base)
        assert imported <= {"__future__", *sys.stdlib_module_names}, (name, imported)


def test_no_package_imports_a_package_above_it():
    upward = [
        f"{where}: {a} imports {b}"
        for (a, b), where in package_edges().items()
        if b not in LAYERS or LAYERS.index(b) > LAYERS.index(a)
    ]
    assert not upward, upward


def test_the_package_graph_has_no_cycle():
    edges = package_edges()
    graph = {p: {b for (a, b) in edges if a == p} for p in LAYERS}
    state: dict[str, str] = {}

    def visit(package: str, path: list[str]) -> list[str] | None:
        state[package] = "open"
        for nxt in sorted(graph.get(package, ())):
            if state.get(nxt) == "open":
                return [*path, package, nxt]
            if nxt not in state and (cycle := visit(nxt, [*path, package])):
                return cycle
        state[package] = "done"
        return None

    cycles = [c for p in LAYERS if p not in state and (c := visit(p, []))]
    assert not cycles, cycles


def test_the_checker_sees_imports_inside_functions_and_through_the_facade(tmp_path):
    # A late import of an upper package inside a function is still an edge, and so is a name taken
    # from the facade (`from badit import RegroupCallback` is an import of badit.training).
    (tmp_path / "low").mkdir()
    (tmp_path / "low" / "m.py").write_text(
        "import os\n\ndef f():\n    from badit.up.x import y\n    from badit import RegroupCallback\n"
    )
    assert package_edges(tmp_path) == {("low", "up"): "low/m.py:4", ("low", "training"): "low/m.py:5"}
