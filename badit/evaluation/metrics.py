"""Per-example metrics that reproduce the SuperNI / Tk-Instruct scoring scripts
(natural-instructions `eval/automatic/evaluation.py`, Tk-Instruct `src/compute_metrics.py`).

- exact match: after normalisation (lowercase, drop ASCII punctuation, collapse whitespace), the
  prediction equals a reference. Like those scripts, and unlike SQuAD v1.1, articles are KEPT by
  default (`remove_articles=True` gives the SQuAD normalisation).
- ROUGE-L: F1 of `rouge_score.rouge_scorer.RougeScorer(['rougeL'], use_stemmer=True)` (its default
  tokenizer: lowercase, non-[a-z0-9] characters become spaces, Porter stemming).
- Non-English references: that default tokenizer deletes every non-ASCII letter, so SuperNI's
  "xlingual" track scores with the GPT-2 byte-level BPE tokens instead (leading "Ġ" stripped, no
  stemming). We do the same when the `gpt2` tokenizer is available locally (Hugging Face cache); if
  it is not, we fall back to whitespace tokens (what older Tk-Instruct code did) and warn once that
  those numbers are not comparable with SuperNI's xlingual track.
- Each metric is the max over the references; task scores are means over examples, times 100.
"""

from __future__ import annotations

import functools
import re
import string
import warnings
from collections.abc import Sequence

from rouge_score import rouge_scorer

_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str, remove_articles: bool = False) -> str:
    """Lowercase, drop ASCII punctuation (and articles if asked), collapse whitespace."""
    text = "".join(ch for ch in str(text).lower() if ch not in _PUNCTUATION)
    if remove_articles:
        text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, references: Sequence[str], remove_articles: bool = False) -> float:
    """1.0 if the normalised prediction equals any normalised reference, else 0.0."""
    pred = normalize_answer(prediction, remove_articles)
    return float(any(pred == normalize_answer(ref, remove_articles) for ref in references))


class _GPT2WordTokenizer:
    """GPT-2 BPE tokens without the leading-space marker, as SuperNI's xlingual scorer uses."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def tokenize(self, text: str) -> list[str]:
        return [t.lstrip("Ġ") for t in self.tokenizer.tokenize(text)]


class _WhitespaceTokenizer:
    def tokenize(self, text: str) -> list[str]:
        return text.split()


@functools.cache
def _english_scorer() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


@functools.cache
def _xlingual_scorer() -> rouge_scorer.RougeScorer:
    try:
        from transformers import AutoTokenizer

        tokenizer = _GPT2WordTokenizer(AutoTokenizer.from_pretrained("gpt2", local_files_only=True))
    except (OSError, ValueError):
        warnings.warn(
            "ROUGE-L for non-English outputs: the 'gpt2' tokenizer SuperNI uses for its xlingual track is not "
            "in the local Hugging Face cache, so whitespace tokens are used; these scores are not comparable "
            "with SuperNI's xlingual numbers (download 'gpt2' once to fix).",
            stacklevel=3,
        )
        tokenizer = _WhitespaceTokenizer()
    return rouge_scorer.RougeScorer(["rougeL"], tokenizer=tokenizer)


def rouge_l(prediction: str, references: Sequence[str], english: bool = True) -> float:
    """Best ROUGE-L F1 in [0, 1] of `prediction` against `references`."""
    scorer = _english_scorer() if english else _xlingual_scorer()
    return max(
        scorer.score(target=str(ref), prediction=str(prediction))["rougeL"].fmeasure for ref in references
    )
