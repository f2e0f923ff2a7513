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
from badit.adapter.hydralora import HydraLoraConfig, HydraLoraModel
from badit.adapter.model import BaditModel
from badit.adapter.peft_type import (
    HYDRALORA_NAME,
    HYDRALORA_PREFIX,
    METHOD_NAME,
    PREFIX,
    badit_peft_type,
    hydralora_peft_type,
)


def register() -> None:
    """Make `get_peft_model`, `PeftConfig.from_pretrained` and `PeftModel.from_pretrained` know BADIT
    and HydraLoRA (badit.adapter.hydralora).

    Idempotent: a second call (e.g. a module reload) leaves the registration as it is.
    """
    _register(badit_peft_type(), METHOD_NAME, BaditConfig, BaditModel, PREFIX)
    _register(hydralora_peft_type(), HYDRALORA_NAME, HydraLoraConfig, HydraLoraModel, HYDRALORA_PREFIX)


def _register(peft_type, name: str, config_cls, model_cls, prefix: str) -> None:
    registered = PEFT_TYPE_TO_TUNER_MAPPING.get(peft_type)
    if registered is not None:
        if registered.__qualname__ != model_cls.__qualname__:
            raise RuntimeError(
                f"PEFT already has a method registered as {name.upper()!r} ({registered!r}); "
                "this version of badit cannot register itself alongside it."
            )
        return
    register_peft_method(name=name, config_cls=config_cls, model_cls=model_cls, prefix=prefix)
