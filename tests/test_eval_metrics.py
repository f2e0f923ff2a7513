"""Metric values on hand-computed cases: exact match, ROUGE-L, task averages, interference, continual."""

from __future__ import annotations

import json
import math

import pytest

from badit.evaluation import continual_metrics, exact_match, interference_score, normalize_answer, rouge_l
from badit.evaluation import metrics as metrics_module
from badit.evaluation.scoring import metrics_from_records, score_example, score_predictions_file


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
    out = continual_metrics(R, base=[4.0, 8.0, 12.0], single=[70.0, 80.0, 100.0])
    assert out["AP"] == pytest.approx((60 + 75 + 90) / 3)  # 75
    # SAPT: the best score since the task was learnt; task 0: max(80, 90) - 60, task 1: 85 - 75
    assert out["forgetting"] == pytest.approx(((90 - 60) + (85 - 75)) / 2)  # 20
    assert out["BWT"] == pytest.approx(((60 - 80) + (75 - 85)) / 3)  # -10: over T = 3 tasks
    assert out["FWT"] == pytest.approx((80 + 85 + 90) / 3 - (70 + 80 + 100) / 3)  # 85 - 83.33 = 1.67
    assert out["forgetting_gem"] == pytest.approx(((90 - 60) + (85 - 75)) / 2)  # 20 (R[0][1] = 10 < 85)
    assert out["BWT_gem"] == pytest.approx(((60 - 80) + (75 - 85)) / 2)  # -15: over T-1 = 2 tasks
    assert out["FWT_gem"] == pytest.approx(((10 - 8) + (20 - 12)) / 2)  # 5


def test_continual_metrics_literature_vs_gem_on_the_issue_matrix():
    """Issue 18's matrix: badit's old (GEM) numbers F 10.5, BWT -8, FWT 17; SAPT's 8, -5.33, -3."""
    R = [
        [60.0, 55.0, 15.0],  # task 1 scores 55 zero-shot after stage 0, more than the 50 once learnt
        [58.0, 50.0, 20.0],
        [50.0, 44.0, 70.0],
    ]
    base = [20.0, 30.0, 11.0]
    single = [62.0, 55.0, 72.0]
    out = continual_metrics(R, base=base, single=single)
    assert out["AP"] == pytest.approx((50 + 44 + 70) / 3)  # 54.67
    # forgetting: task 0: max(60, 58) - 50 = 10; task 1: SAPT max over stage 1 only = 50 - 44 = 6,
    # GEM/Chaudhry max over stages 0, 1 = max(55, 50) - 44 = 11
    assert out["forgetting"] == pytest.approx((10 + 6) / 2)  # 8
    assert out["forgetting_gem"] == pytest.approx((10 + 11) / 2)  # 10.5
    # BWT: (50 - 60) + (44 - 50) = -16, over T = 3 (SAPT) or T-1 = 2 (GEM)
    assert out["BWT"] == pytest.approx(-16 / 3)  # -5.33
    assert out["BWT_gem"] == pytest.approx(-16 / 2)  # -8
    # FWT (SAPT): mean diagonal (60 + 50 + 70) / 3 = 60 minus mean single (62 + 55 + 72) / 3 = 63
    assert out["FWT"] == pytest.approx(60 - 63)  # -3
    # FWT_gem: zero-shot R[0][1] - b[1] = 55 - 30 = 25, R[1][2] - b[2] = 20 - 11 = 9
    assert out["FWT_gem"] == pytest.approx((25 + 9) / 2)  # 17


def test_continual_metrics_edge_cases():
    nan = math.nan
    lower = [[50.0, nan], [40.0, 70.0]]  # tasks not evaluated before they are learnt
    assert continual_metrics(lower) == {
        "AP": 55.0,
        "forgetting": 10.0,  # 50 - 40
        "BWT": -5.0,  # (40 - 50) / 2
        "FWT": None,  # no single-task scores
        "forgetting_gem": 10.0,
        "BWT_gem": -10.0,
        "FWT_gem": None,  # no base scores (and R[0][1] is NaN)
    }
    one = continual_metrics([[42.0]], base=[1.0], single=[40.0])
    assert one == {
        "AP": 42.0,
        "forgetting": None,
        "BWT": None,
        "FWT": 2.0,  # 42 - 40: defined for one task
        "forgetting_gem": None,
        "BWT_gem": None,
        "FWT_gem": None,
    }
    with pytest.raises(ValueError, match="T x T"):
        continual_metrics([[1.0, 2.0]])
    with pytest.raises(ValueError, match="base must hold one score per task"):
        continual_metrics([[1.0, 2.0], [3.0, 4.0]], base=[1.0])
    with pytest.raises(ValueError, match="single must hold one score per task"):
        continual_metrics([[1.0, 2.0], [3.0, 4.0]], single=[1.0, 2.0, 3.0])


def test_compare_takes_fwt_from_the_single_task_run(tmp_path):
    """A continual run's FWT (SAPT's) comes from a single-task run given beside it; the table names
    the definitions. The matrix is the issue's (see the test above): FWT 60 - 63 = -3."""
    from badit.experiments.compare import compare, format_table

    order = ["t0", "t1", "t2"]
    R = [[60.0, 55.0, 15.0], [58.0, 50.0, 20.0], [50.0, 44.0, 70.0]]

    def scores(values):
        return {t: {"rougeL": v, "exact_match": v} for t, v in zip(order, values)}

    def write(name, setting, tasks, continual=None):
        folder = tmp_path / name
        folder.mkdir()
        mean = sum(s["rougeL"] for s in tasks.values()) / len(tasks)  # as badit writes it (checked on read)
        average = {"rougeL": mean, "exact_match": mean}
        info = {"method": "lora", "setting": setting, "model": "m"}
        body = {"tasks": tasks, "average": average, "run": info, "continual": continual}
        (folder / "metrics.json").write_text(json.dumps(body))
        return folder

    # as a run written before the SAPT/GEM split: only the old keys, GEM's numbers under them
    old = {"AP": 54.67, "forgetting": 10.5, "BWT": -8.0, "FWT": 17.0}
    continual = {
        "order": order,
        "score_matrix": {"rougeL": R, "exact_match": R},
        "base_scores": {"rougeL": [20.0, 30.0, 11.0], "exact_match": [20.0, 30.0, 11.0]},
        "rougeL": old,
        "exact_match": old,
    }
    runs = compare(
        [write("cont", "continual", scores(R[2]), continual), write("one", "single", scores([62, 55, 72]))]
    )
    numbers = runs[0].continual["rougeL"]
    assert numbers["FWT"] == pytest.approx(-3.0) and numbers["FWT_gem"] == pytest.approx(17.0)
    assert numbers["BWT"] == pytest.approx(-16 / 3) and numbers["forgetting"] == pytest.approx(8.0)
    table = format_table(runs)
    assert "lora (continual): FWT against the single-task scores of lora (single)" in table
    assert "as SAPT's score.py defines them" in table
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("|")}
    assert rows["FWT"].split("|")[2].strip() == "-3.00" and rows["BWT_gem"].split("|")[2].strip() == "-8.00"
