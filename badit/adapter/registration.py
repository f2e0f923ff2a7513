"""Register BADIT as a PEFT method.

`peft.utils.register_peft_method` is PEFT's public way to add a method; it needs BADIT's member of
PeftType, which `badit.adapter.peft_type` adds (the one step beyond PEFT's public API).
`tests/test_adapter_registration.py` fails loudly when a PEFT upgrade changes what it relies on.
Tested with the range pinned in pyproject.toml.
"""

from __future__ import annotations

from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING
from peft.utils.peft_types import register_peft_method

from badit.adapter.config import BaditConfig
from badit.adapter.model import BaditModel
from badit.adapter.peft_type import METHOD_NAME, PEFT_TYPE_NAME, PREFIX, badit_peft_type


def register() -> None:
    """Make `get_peft_model`, `PeftConfig.from_pretrained` and `PeftModel.from_pretrained` know BADIT.

    Idempotent: a second call (e.g. a module reload) leaves the registration as it is.
    """
    peft_type = badit_peft_type()
    registered = PEFT_TYPE_TO_TUNER_MAPPING.get(peft_type)
    if registered is not None:
        if registered.__qualname__ != BaditModel.__qualname__:
            raise RuntimeError(
                f"PEFT already has a method registered as {PEFT_TYPE_NAME!r} ({registered!r}); "
                "this version of badit cannot register itself alongside it."
            )
        return
    register_peft_method(name=METHOD_NAME, config_cls=BaditConfig, model_cls=BaditModel, prefix=PREFIX)
