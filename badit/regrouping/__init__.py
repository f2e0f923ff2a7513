"""Dynamic orthogonality: periodic regrouping of rank-1 components by gradient direction.

`attach_gradient_tracking(model)` installs the backward hooks that gather each component's gradient
since the last regroup; `regroup(model, optimizer)` clusters the components of every BADIT layer into
experts of equal size (balanced spherical k-means) and permutes them, with their optimizer state;
`regroup_due(config, ...)` implements the schedule of the BaditConfig.
"""

from badit.regrouping.core import regroup, regroup_summary
from badit.regrouping.gradients import attach_gradient_tracking, detach_gradient_tracking
from badit.regrouping.permute import UnsupportedOptimizerState, permute_components
from badit.regrouping.plan import RegroupPlan, grouping_stats, plan_regroup
from badit.regrouping.schedule import never_regroups, regroup_due

__all__ = [
    "RegroupPlan",
    "UnsupportedOptimizerState",
    "attach_gradient_tracking",
    "detach_gradient_tracking",
    "grouping_stats",
    "permute_components",
    "plan_regroup",
    "regroup",
    "never_regroups",
    "regroup_due",
    "regroup_summary",
]
