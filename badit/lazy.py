"""Lazy exports for a package's ``__init__`` (PEP 562): a name is imported from its submodule on
first use, so that importing the package (``badit.data`` for ``badit data check``, ``badit.analysis``
for ``badit report``) loads no torch. Written here because the standard library offers the hook,
not the helper; ``badit/__init__.py`` keeps its own (it maps names to modules of other packages).

A package using it must not name a submodule like one of its exports: importing a submodule sets the
package attribute of its name, which would then shadow the exported function.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable, Callable]:
    """``(__getattr__, __dir__)`` for ``package`` whose public names ``exports`` maps to submodules
    (``{"analyze": "report"}``: ``package.analyze`` is ``package.report.analyze``). A name once loaded
    is stored on the package, so later look-ups skip the hook."""

    def __getattr__(name: str):
        if name in exports:
            value = getattr(importlib.import_module(f"{package}.{exports[name]}"), name)
            setattr(sys.modules[package], name, value)
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted([*vars(sys.modules[package]), *exports])

    return __getattr__, __dir__
