"""Where do tasks interfere? Gradient conflict, expert co-activation and neuron co-activation.

The three measurements of the BADIT paper's interference analysis, computed on any PEFT or plain
causal LM from one batch (or a few) per task:

- `gradient_conflict` (module `conflict`): cosine between the tasks' gradients on the trainable
  parameters, per layer; negative values mean the tasks pull shared weights in opposite directions.
- `expert_usage`: mean routing weight of each expert per task (BADIT / MoE adapters), and how
  similar the tasks' expert profiles are.
- `neuron_overlap`: Jaccard overlap of the most active MLP neurons between tasks.

Names are loaded on first use (PEP 562 `__getattr__`, as `badit` itself), so that `badit report`,
which only needs `plots` and the verdicts of `router_health`, never imports torch. No submodule is
named like a name exported here: importing a submodule sets the package attribute of its name.
"""

from __future__ import annotations

from badit.lazy import lazy_exports

_EXPORTS = {
    "expert_usage": "coactivation",
    "neuron_overlap": "coactivation",
    "top_fraction_jaccard": "coactivation",
    "cosine_matrix": "conflict",
    "gradient_conflict": "conflict",
    "analyze": "report",
    "router_separability": "separability",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
