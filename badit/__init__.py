"""badit: BADIT (orthogonal basic-ability experts) as a PEFT method.

`import badit` registers the method with PEFT, so `peft.get_peft_model(model, badit.BaditConfig(...))`,
`save_pretrained` and `PeftModel.from_pretrained` work as for PEFT's own methods.
"""

__version__ = "0.1.0"

from badit.adapter import BaditConfig, BaditModel, get_routing_weights  # noqa: E402  (registers with PEFT)
from badit.regrouping import attach_gradient_tracking, regroup  # noqa: E402

__all__ = [
    "BaditConfig",
    "BaditModel",
    "__version__",
    "attach_gradient_tracking",
    "get_routing_weights",
    "regroup",
]
