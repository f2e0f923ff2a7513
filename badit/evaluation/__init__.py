"""badit.evaluation: greedy generation, SuperNI metrics, interference and continual-learning scores.

Names are loaded on first use (PEP 562 `__getattr__`, as `badit` itself), so that the pure numeric
parts (`continual`, `statistics`) import without torch (`badit report` uses them); `generate` and
`scoring` (which calls it) import torch. No submodule is named like a name exported here: importing a
submodule sets the package attribute of its name (hence `scoring.py` for `evaluate`).
"""

from __future__ import annotations

from badit.lazy import lazy_exports

_EXPORTS = {
    "continual_metrics": "continual",
    "interference_score": "continual",
    "mean_over_tasks": "continual",
    "evaluate": "scoring",
    "metrics_from_records": "scoring",
    "score_predictions_file": "scoring",
    "generate_answers": "generate",
    "generate_ids": "generate",
    "exact_match": "metrics",
    "normalize_answer": "metrics",
    "rouge_l": "metrics",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
