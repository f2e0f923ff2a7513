"""Register BADIT as a PEFT method.

`peft.utils.register_peft_method` is PEFT's public way to add a method, but it only accepts names that are
already members of the `peft.utils.peft_types.PeftType` enum. Adding a member to that enum is beyond PEFT's
public API, so it lives here, in one place, and `tests/test_adapter_registration.py` fails loudly when a
PEFT upgrade changes what it relies on. Tested with the range pinned in pyproject.toml.
"""

from __future__ import annotations

import enum

from peft.utils.peft_types import PeftType, register_peft_method

METHOD_NAME = "badit"
PEFT_TYPE_NAME = METHOD_NAME.upper()
PREFIX = "badit_"


def _add_enum_member(enum_cls: type[enum.Enum], name: str, value: str) -> enum.Enum:
    """Add `name = value` to a `str` Enum at runtime (the standard library offers no API for this)."""
    if name in enum_cls.__members__:
        return enum_cls[name]
    member = str.__new__(enum_cls, value)
    member._name_ = name
    member._value_ = value
    member.__objclass__ = enum_cls
    # Set the class attribute first: EnumType.__setattr__ refuses to rebind names already in _member_map_.
    type.__setattr__(enum_cls, name, member)
    enum_cls._member_map_[name] = member
    enum_cls._value2member_map_[value] = member
    enum_cls._member_names_.append(name)
    return member


def badit_peft_type() -> PeftType:
    """The `PeftType` member for BADIT, added to PEFT's enum on first use."""
    return _add_enum_member(PeftType, PEFT_TYPE_NAME, PEFT_TYPE_NAME)


def register() -> None:
    """Make `get_peft_model`, `PeftConfig.from_pretrained` and `PeftModel.from_pretrained` know BADIT.

    Idempotent: a second call (e.g. a module reload) leaves the registration as it is.
    """
    from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING

    from badit.adapter.config import BaditConfig
    from badit.adapter.model import BaditModel

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
