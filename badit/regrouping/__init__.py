"""Dynamic orthogonality: periodic regrouping of rank-1 components by gradient direction.

`attach_gradient_tracking(model)` installs the backward hooks that gather each component's gradient
since the last regroup; `regroup(model, optimizer)` clusters the components of every BADIT layer into
experts of equal size (balanced spherical k-means) and permutes them, with their optimizer state;
`regroup_due(config, ...)` implements the schedule of the BaditConfig.

Names are loaded on first use (PEP 562 `__getattr__`, as `badit` itself), so that `schedule` (read by
`badit report` to say why a run never regrouped) imports without torch.
"""

from __future__ import annotations

from badit.lazy import lazy_exports

_EXPORTS = {
    "regroup": "core",
    "regroup_summary": "core",
    "attach_gradient_tracking": "gradients",
    "detach_gradient_tracking": "gradients",
    "UnsupportedOptimizerState": "permute",
    "permute_components": "permute",
    "RegroupPlan": "plan",
    "grouping_stats": "plan",
    "plan_regroup": "plan",
    "never_regroups": "schedule",
    "regroup_due": "schedule",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
