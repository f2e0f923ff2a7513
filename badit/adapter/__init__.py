"""BADIT as a PEFT method: `BaditConfig`, `BaditModel`, `BaditLinear`; importing registers it with PEFT."""

from badit.adapter.config import BaditConfig
from badit.adapter.layer import BaditLinear
from badit.adapter.model import BaditModel, get_routing_weights
from badit.adapter.registration import register

register()

__all__ = ["BaditConfig", "BaditLinear", "BaditModel", "get_routing_weights"]
