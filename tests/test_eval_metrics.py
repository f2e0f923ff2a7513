"""Metric values on hand-computed cases: exact match, ROUGE-L, task averages, interference, continual."""

from __future__ import annotations

import json
import math

import pytest

from badit.evaluation import continual_metrics, exact_match, interference_score, normalize_answer, rouge_l
from badit.evaluation import metrics as metrics_module
from badit.evaluation.evaluate import metrics_from_records, score_example, score_predictions_file


def test_normalisation_and_exact_match():
    assert normalize_answer("  The  Cat,\tsat! ") == "the cat sat"
    assert exact_match("The cat.", ["dog", "the  CAT"]) == 1.0
    assert exact_match("cat", ["the cat"]) == 0.0  # SuperNI/Tk-Instruct keep articles
    assert exact_match("cat", ["the cat"], remove_articles=True) == 1.0  # SQuAD v1.1 drops them
    assert exact_match("", ["x"]) == 0.0


@pytest.mark.parametrize(
    ("prediction", "references", "expected"),
    [
        # LCS "the cat on the mat" = 5 of 6 tokens on both sides: P = R = F = 5/6
        ("the cat sat on the mat", ["the cat is on the mat"], 5 / 6),
        # LCS "a c" = 2: P = 2/4, R = 2/2, F = 2PR/(P+R) = 2/3
        ("a b c d", ["a c"], 2 / 3),
        # max over references: "cat" vs "the cat": P = 1, R = 1/2, F = 2/3; vs "dog": 0
        ("cat", ["dog", "the cat"], 2 / 3),
        # Porter stemming (tokens longer than 3 characters): running -> run, dogs -> dog
        ("running dogs", ["run dog"], 1.0),
        # case and punctuation are ignored by the default tokenizer
        ("Hello, World!", ["hello world"], 1.0),
        ("", ["anything"], 0.0),
    ],
)
def test_rouge_l_hand_computed(prediction, references, expected):
    assert rouge_l(prediction, references) == pytest.approx(expected, abs=1e-12)


def test_rouge_l_non_english_falls_back_to_whitespace_tokens_with_a_warning(monkeypatch):
    # The default rouge tokenizer deletes every non-ASCII letter: a Japanese answer scores 0 whatever it says.
    assert rouge_l("東京 大学", ["東京"]) == 0.0

    def no_download(*args, **kwargs):
        raise OSError("not in the local cache")

    monkeypatch.setattr("transformers.AutoTokenizer.from_pretrained", no_download)
    metrics_module._xlingual_scorer.cache_clear()
    try:
        with pytest.warns(UserWarning, match="not comparable with SuperNI's xlingual"):
            score = rouge_l("東京 大学", ["東京"], english=False)
    finally:
        metrics_module._xlingual_scorer.cache_clear()
    assert score == pytest.approx(2 / 3)  # whitespace tokens: P = 1/2, R = 1


def test_task_average_is_over_tasks_and_all_examples_over_examples(tmp_path):
    rows = [("a", "yes", ["yes"]), ("a", "no", ["yes"]), ("a", "no", ["yes"]), ("b", "the cat", ["cat"])]
    records = [
        score_example({"task": t, "id": str(i), "prediction": p, "references": r})
        for i, (t, p, r) in enumerate(rows)
    ]
    metrics = metrics_from_records(records)
    assert metrics["tasks"]["a"] == {"rougeL": 33.3333, "exact_match": 33.3333, "num_examples": 3}
    assert metrics["tasks"]["b"] == {"rougeL": 66.6667, "exact_match": 0.0, "num_examples": 1}  # P=1/2, R=1
    assert metrics["average"] == {
        "rougeL": 50.0,
        "exact_match": 16.6667,
    }  # (100/3 + 200/3) / 2, (100/3 + 0) / 2
    assert metrics["all_examples"] == {"rougeL": 41.6667, "exact_match": 25.0, "num_examples": 4}  # 5/3 / 4
    path = tmp_path / "predictions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert score_predictions_file(path) == metrics


def test_interference_score():
    assert interference_score({"a": 50.0, "b": 30.0}, {"b": 40.0, "a": 60.0}) == pytest.approx(-10.0)
    with pytest.raises(ValueError, match=r"only multi-task: \['c'\], only single-task: \[\]"):
        interference_score({"a": 1.0, "c": 2.0}, {"a": 1.0})


def test_continual_metrics_on_a_known_matrix():
    R = [
        [80.0, 10.0, 5.0],
        [90.0, 85.0, 20.0],
        [60.0, 75.0, 90.0],
    ]
    out = continual_metrics(R, base=[4.0, 8.0, 12.0])
    assert out["AP"] == pytest.approx((60 + 75 + 90) / 3)  # 75
    assert out["forgetting"] == pytest.approx(
        ((90 - 60) + (85 - 75)) / 2
    )  # 20: best earlier score, not R[j][j]
    assert out["BWT"] == pytest.approx(((60 - 80) + (75 - 85)) / 2)  # -15
    assert out["FWT"] == pytest.approx(((10 - 8) + (20 - 12)) / 2)  # 5


def test_continual_metrics_edge_cases():
    nan = math.nan
    lower = [[50.0, nan], [40.0, 70.0]]  # tasks not evaluated before they are learnt
    assert continual_metrics(lower) == {"AP": 55.0, "forgetting": 10.0, "BWT": -10.0, "FWT": None}
    assert continual_metrics([[42.0]], base=[1.0]) == {
        "AP": 42.0,
        "forgetting": None,
        "BWT": None,
        "FWT": None,
    }
    with pytest.raises(ValueError, match="T x T"):
        continual_metrics([[1.0, 2.0]])
    with pytest.raises(ValueError, match="one score per task"):
        continual_metrics([[1.0, 2.0], [3.0, 4.0]], base=[1.0])
