"""badit: BADIT (orthogonal basic-ability experts) as a PEFT method.

`import badit` registers the method with PEFT, so `peft.get_peft_model(model, badit.BaditConfig(...))`,
`save_pretrained` and `PeftModel.from_pretrained` work as for PEFT's own methods.

The package itself is light: its names (`badit.BaditConfig`, `badit.regroup`, ...) import torch and
PEFT on first use (PEP 562 `__getattr__`), so that `badit --help` answers at once. Registration
still happens by the time PEFT is used: at once when `peft` is already imported, otherwise right
after `peft` is (a small import hook; nothing else is changed in PEFT's import).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"

_EXPORTS = {
    "BaditConfig": "badit.adapter",
    "BaditModel": "badit.adapter",
    "get_routing_weights": "badit.adapter",
    "routing_tasks": "badit.adapter",
    "attach_gradient_tracking": "badit.regrouping",
    "regroup": "badit.regrouping",
    "RegroupCallback": "badit.training.callbacks",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'badit' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_EXPORTS])


class _RegisterWithPeft(importlib.abc.MetaPathFinder):
    """Imports `badit.adapter` (which registers BADIT) right after `peft` has been executed."""

    def __init__(self):
        self.searching = False

    def find_spec(self, name, path=None, target=None):
        if name != "peft" or self.searching:
            return None
        self.searching = True  # let the other finders locate peft
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self.searching = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run_peft = spec.loader.exec_module

        def exec_module(module):
            run_peft(module)
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            importlib.import_module("badit.adapter")

        spec.loader.exec_module = exec_module
        return spec


if "peft" in sys.modules:
    importlib.import_module("badit.adapter")
elif not any(isinstance(finder, _RegisterWithPeft) for finder in sys.meta_path):
    sys.meta_path.insert(0, _RegisterWithPeft())
