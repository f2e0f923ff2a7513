"""Where do tasks interfere? Gradient conflict, expert co-activation and neuron co-activation.

The three measurements of the BADIT paper's interference analysis, computed on any PEFT or plain
causal LM from one batch (or a few) per task:

- `gradient_conflict`: cosine between the tasks' gradients on the trainable parameters, per layer;
  negative values mean the tasks pull shared weights in opposite directions.
- `expert_usage`: mean routing weight of each expert per task (BADIT / MoE adapters), and how
  similar the tasks' expert profiles are.
- `neuron_overlap`: Jaccard overlap of the most active MLP neurons between tasks.
"""

from badit.analysis.coactivation import expert_usage, neuron_overlap, top_fraction_jaccard
from badit.analysis.gradient_conflict import cosine_matrix, gradient_conflict
from badit.analysis.report import analyze

__all__ = [
    "analyze",
    "cosine_matrix",
    "expert_usage",
    "gradient_conflict",
    "neuron_overlap",
    "top_fraction_jaccard",
]
