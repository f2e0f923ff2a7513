"""badit: BADIT (orthogonal basic-ability experts) as a PEFT method."""

__version__ = "0.1.0"

from badit.adapter import BaditConfig, BaditModel, get_routing_weights  # noqa: E402  (registers with PEFT)
from badit.regroup import attach_gradient_tracking, regroup  # noqa: E402, F401  (public API)

__all__ = ["BaditConfig", "BaditModel", "get_routing_weights", "__version__"]
