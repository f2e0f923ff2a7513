"""BADIT as a PEFT method: `BaditConfig`, `BaditModel`, `BaditLinear`; importing registers it (and the
HydraLoRA baseline, `HydraLoraConfig`) with PEFT."""

from badit.adapter.config import BaditConfig
from badit.adapter.hydralora import HydraLoraConfig
from badit.adapter.layer import BaditLinear
from badit.adapter.model import BaditModel, get_routing_weights, routing_tasks, uses_task_routing
from badit.adapter.registration import register

register()

__all__ = [
    "BaditConfig",
    "BaditLinear",
    "BaditModel",
    "HydraLoraConfig",
    "get_routing_weights",
    "routing_tasks",
    "uses_task_routing",
]
