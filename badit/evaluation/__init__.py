"""badit.evaluation: greedy generation, SuperNI metrics, interference and continual-learning scores."""

from badit.evaluation.continual import continual_metrics, interference_score, mean_over_tasks
from badit.evaluation.evaluate import evaluate, metrics_from_records, score_predictions_file
from badit.evaluation.generate import generate_answers, generate_ids
from badit.evaluation.metrics import exact_match, normalize_answer, rouge_l

__all__ = [
    "continual_metrics",
    "evaluate",
    "exact_match",
    "generate_answers",
    "generate_ids",
    "interference_score",
    "mean_over_tasks",
    "normalize_answer",
    "rouge_l",
    "score_predictions_file",
    "metrics_from_records",
]
