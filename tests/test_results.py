"""The results model (issue 17): groups of seeds, interference, the one table type and its sanitising."""

from __future__ import annotations

import pytest

from badit.experiments.results import (
    AVERAGE,
    Table,
    interference,
    load_runs,
    seed_groups,
    single_reference,
    summary_table,
)
from tests.helpers import hand_run


def test_groups_interference_and_the_reference_rule(tmp_path):
    runs = load_runs(
        [
            hand_run(tmp_path / "a1", "lora", "multitask", 1, {"x": 40.0, "y": 80.0}),
            hand_run(tmp_path / "a2", "lora", "multitask", 2, {"x": 60.0, "y": 60.0}),
            hand_run(tmp_path / "s-dev", "lora", "single", 1, {"x": 0.0, "y": 0.0}, split="dev"),
            hand_run(tmp_path / "s-badit", "badit", "single", 1, {"x": 45.0, "y": 75.0}),
            hand_run(tmp_path / "s-lora", "lora", "single", 1, {"x": 55.0, "y": 65.0}),
        ]
    )
    assert [r.label for r in runs[:2]] == ["lora (multitask) seed 1", "lora (multitask) seed 2"]
    multi, *singles = seed_groups(runs)
    assert len(multi.runs) == 2 and multi.label == "lora (multitask)"
    # x: (40 + 60) / 2 = 50, sample std sqrt((100 + 100) / 1) = 14.14; averages per seed 60 and 60
    assert multi.score("x", "rougeL").mean == 50.0
    assert multi.score("x", "rougeL").std == pytest.approx(200**0.5)
    assert multi.score(AVERAGE, "rougeL").as_dict() == {"mean": 60.0, "std": 0.0, "values": [60.0, 60.0]}
    assert multi.score(AVERAGE, "rougeL", ["x"]).mean == 50.0
    # the reference: same split (not the dev run), the same method before another
    reference = single_reference(multi, singles)
    assert reference.runs[0].path.name == "s-lora"
    # x 50 - 55 = -5, y 70 - 65 = +5 -> mean 0; EM is half of each
    found = interference(multi, reference)
    assert found.per_task == {
        "x": {"rougeL": -5.0, "exact_match": -2.5},
        "y": {"rougeL": 5.0, "exact_match": 2.5},
    }
    assert found.average == {"rougeL": 0.0, "exact_match": 0.0}


def test_table_renders_terminal_markdown_and_html():
    table = Table(["task", "a"], [["t1", "1.00"], ["average", "1.00"]], strong={1}, notes=["n"])
    assert table.markdown() == ("| task | a |\n|---|---:|\n| t1 | 1.00 |\n| **average** | **1.00** |\n\nn\n")
    assert table.terminal() == (
        "| task        |        a |\n|-------------|---------:|\n| t1          |     1.00 |\n"
        "| **average** | **1.00** |\n\nn\n"
    )
    assert table.html() == (
        "<table><thead><tr><th>task</th><th>a</th></tr></thead><tbody><tr><td>t1</td><td>1.00</td></tr>"
        "<tr><td><strong>average</strong></td><td><strong>1.00</strong></td></tr></tbody></table>"
    )


def test_names_from_run_folders_cannot_reach_the_terminal_or_html_as_code():
    evil = "\x1b[2J\x1b]0;owned\x07<script>a|b</script>\r"
    table = Table(["task", evil], [[evil, "1.00"]], title=evil, notes=[evil])
    text = table.terminal()
    assert "\x1b" not in text and "\x07" not in text and "\r" not in text
    assert "<script>" not in text and "\\<script\\>" in text  # shown as text by Markdown, never run
    assert "a\\|b" in text and all(
        line.count(" | ") <= 1 for line in text.splitlines() if line.startswith("|")
    )
    assert "<script>" not in table.html() and "&lt;script&gt;" in table.html()
    summary = summary_table(
        {
            "tasks": {evil: {"rougeL": 1.0, "exact_match": 0.0, "num_examples": 1}},
            "average": {"rougeL": 1.0, "exact_match": 0.0},
        },
        f"run {evil}",
    )
    assert "\x1b" not in summary and "<script>" not in summary and summary.startswith("# run ")
