"""BADIT's (and HydraLoRA's) members of PEFT's `PeftType` enum.

`peft.utils.register_peft_method` only accepts names that are already members of
`peft.utils.peft_types.PeftType`. Adding a member to that enum is beyond PEFT's public API, so it
lives here, in one place below both `BaditConfig` (which sets its `peft_type`) and the registration.
"""

from __future__ import annotations

import enum

from peft.utils.peft_types import PeftType

METHOD_NAME = "badit"
PEFT_TYPE_NAME = METHOD_NAME.upper()
PREFIX = "badit_"
HYDRALORA_NAME = "hydralora"  # badit.adapter.hydralora, the multi-task baseline of issue 19
HYDRALORA_PREFIX = "hydra_"


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


def hydralora_peft_type() -> PeftType:
    """The `PeftType` member for HydraLoRA, added to PEFT's enum on first use."""
    name = HYDRALORA_NAME.upper()
    return _add_enum_member(PeftType, name, name)
