"""The configs badit ships (`badit/configs/`, installed with the package; `configs/` in the repository
is a link to it): the paper's settings and the CPU sweeps. `badit configs list` shows them and `badit
configs copy` copies one to edit, as torchtune's `tune ls` / `tune cp` do for its recipes.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from badit.errors import BaditError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


class RecipeError(BaditError, ValueError):
    """A config name that badit does not ship, or a destination it will not overwrite."""


def _summary(path: Path) -> str:
    """The config's first comment line, without its '#'."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
        if line.strip():
            break
    return ""


def list_configs() -> list[tuple[str, str]]:
    """(name, summary) of every shipped config, sorted; the name is its path under `CONFIG_DIR`
    without .yaml (``superni_multitask``, ``sweeps/interference_cpu``)."""
    return [
        (str(path.relative_to(CONFIG_DIR).with_suffix("")), _summary(path))
        for path in sorted(CONFIG_DIR.rglob("*.yaml"))
    ]


def config_path(name: str) -> Path:
    """The shipped config called ``name`` (with or without .yaml); a RecipeError listing the names."""
    relative = name.removesuffix(".yaml")
    path = (CONFIG_DIR / f"{relative}.yaml").resolve()
    if CONFIG_DIR not in path.parents or not path.is_file():
        names = ", ".join(n for n, _ in list_configs())
        raise RecipeError(f"no shipped config {name!r}; `badit configs list` shows them: {names}")
    return path


def copy_config(name: str | None, dest: str | None = None) -> Path:
    """Copy the shipped config ``name`` to ``dest`` (default: its file name in the current folder); an
    existing file is never overwritten. Returns the file written. A sweep's ``base:`` is relative to the
    sweep file: copy its base beside it too."""
    if not name:
        raise RecipeError("name the config to copy: `badit configs copy NAME [DEST]` (`badit configs list`)")
    source = config_path(name)
    target = Path(dest) if dest else Path(source.name)
    if target.is_dir():
        target = target / source.name
    if target.exists():
        raise RecipeError(f"{target} exists; badit never overwrites it: give another DEST")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return target
