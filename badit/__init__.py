"""badit: BADIT (orthogonal basic-ability experts) as a PEFT method."""

__version__ = "0.1.0"

from badit.adapter import BaditConfig, BaditModel, get_routing_weights  # noqa: E402  (registers with PEFT)

__all__ = ["BaditConfig", "BaditModel", "get_routing_weights", "__version__"]
