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


def test_interference_carries_its_interval_and_the_smallest_resolvable_difference(tmp_path):
    """The results model's paired interference (`Interference.paired`), and the resolvable difference in
    the terminal table of `badit compare` and on the report page, from the same numbers."""
    import json
    import re

    from badit.experiments.compare import compare, comparison_json, format_table
    from badit.experiments.report import build_report

    def run(name, setting, examples):
        means = {t: sum(v) / len(v) for t, v in examples.items()}
        folder = hand_run(tmp_path / "runs" / name, "lora", setting, 0, means)
        records = [
            {"task": t, "id": str(i), "rougeL": v, "exact_match": v / 2}
            for t, values in examples.items()
            for i, v in enumerate(values)
        ]
        (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))

    run("multi", "multitask", {"t1": [40.0, 50.0, 60.0], "t2": [80.0, 80.0, 80.0]})
    run("single", "single", {"t1": [50.0, 50.0, 50.0], "t2": [60.0, 70.0, 80.0]})
    hand_run(tmp_path / "bare" / "multi", "lora", "multitask", 3, {"t1": 40.0, "t2": 40.0})  # no predictions
    # multi - single: t1 [-10, 0, 10] (mean 0, variance 100), t2 [20, 10, 0] (mean 10, variance 100);
    # one seed -> examples only: V = (100/3 + 100/3) / 2^2 = 16.67, SE = 4.082, df = 6 - 2 = 4;
    # t_{0.975, 4} = 2.776: half-width 11.33; one seed, so no resolvable difference (a second seed could
    # move the score by more than the interval is wide): '-' in every table
    runs = compare([tmp_path / "runs" / "multi", tmp_path / "runs" / "single", tmp_path / "bare" / "multi"])
    paired = runs[0].measured.paired("rougeL")
    assert paired["mean"] == pytest.approx(5.0) and paired["std_error"] == pytest.approx((50 / 3) ** 0.5)
    assert paired["df"] == pytest.approx(4.0) and paired["resolvable"] is None
    assert paired["ci95"] == pytest.approx([5.0 - 11.334, 5.0 + 11.334], abs=1e-3)
    assert runs[0].measured.paired("exact_match")["std_error"] == pytest.approx((50 / 3) ** 0.5 / 2)
    # the run without predictions (and without a seed-3 single run) has an interference score (40 - 60) but
    # no interval: "-"
    assert runs[2].measured.paired("rougeL") is None
    table = format_table(runs)
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("|")}
    cells = [c.strip() for c in rows["interference resolvable (80% power)"].split("|")[2:5]]
    assert cells == ["-", "-", "-"]
    assert [c.strip() for c in rows["interference vs single"].split("|")[2:5]] == ["5.00", "-", "-20.00"]
    assert "interference resolvable: the smallest true difference" in table
    numbers = comparison_json(runs)["lora (multitask) seed 0"]["interference_interval"]
    assert numbers["rougeL"]["resolvable"] is None and numbers["rougeL"]["seeds"] == 1
    page = build_report([tmp_path / "runs"])
    cells = [re.findall(r"<td>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", page)]
    assert ["resolvable (80% power)", "-"] in cells
    assert ["interference score (mean)", "5.00"] in cells


def _predicted_run(folder, method, seed, examples):
    """A hand run whose metrics.json holds the task means of ``examples`` (task -> per-example ROUGE-L)
    and whose predictions.jsonl holds the examples (ids 0, 1, ...; EM = ROUGE-L / 2)."""
    import json

    folder = hand_run(folder, method, "multitask", seed, {t: sum(v) / len(v) for t, v in examples.items()})
    records = [
        {"task": t, "id": str(i), "rougeL": v, "exact_match": v / 2}
        for t, values in examples.items()
        for i, v in enumerate(values)
    ]
    (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


# two methods x 2 seeds x 2 tasks x 2 examples; lora - badit per example:
# seed 1: t1 [40-50, 40-60] = [-10, -20], t2 [40-40, 40-50] = [0, -10]
# seed 2: t1 [60-60, 60-70] = [0, -10],   t2 [40-30, 40-60] = [10, -20]
METHOD_SEEDS = {
    ("lora", 1): {"t1": [40.0, 40.0], "t2": [40.0, 40.0]},
    ("lora", 2): {"t1": [60.0, 60.0], "t2": [40.0, 40.0]},
    ("badit", 1): {"t1": [50.0, 60.0], "t2": [40.0, 50.0]},
    ("badit", 2): {"t1": [60.0, 70.0], "t2": [30.0, 60.0]},
}


def test_every_group_against_the_badit_group_by_hand(tmp_path):
    """`reference_differences`: lora (given first) minus badit (the reference: the one badit group), as
    statistics.paired_interval's formula gives it, worked by hand; a group with other seeds gets '-'."""
    from scipy import stats

    from badit.experiments.results import Difference, reference_differences, reference_group

    folders = [_predicted_run(tmp_path / f"{m}-{s}", m, s, ex) for (m, s), ex in METHOD_SEEDS.items()]
    folders.append(_predicted_run(tmp_path / "pissa-3", "pissa", 3, METHOD_SEEDS["lora", 1]))
    groups = seed_groups(load_runs(folders))
    lora, badit, pissa = groups
    assert reference_group(groups) is badit and reference_group([lora, pissa]) is lora  # no badit: first
    found = reference_differences(groups)
    assert [(d.group, d.reference) for d in found] == [(lora, badit), (pissa, badit)]
    assert isinstance(found[0], Difference) and found[0].shared_seeds == [1, 2]
    # Dbar (mean over seeds): t1 [-5, -15] (mean -10, variance 50), t2 [5, -15] (mean -5, variance 200);
    # theta = (-10 + -5) / 2 = -7.5 (= the averages 45 - 52.5: lora seeds 40 and 50, badit 50 and 55)
    # V_examples = (50/2 + 200/2) / 2^2 = 31.25; theta per seed: 1: (-15 + -5)/2 = -10, 2: (-5 + -5)/2 = -5
    # V_seeds = var(-10, -5) / 2 = 12.5 / 2 = 6.25; SE = sqrt(37.5) = 6.124
    # df = 37.5^2 / (31.25^2 / (4 - 2) + 6.25^2 / (2 - 1)) = 1406.25 / 527.34 = 8/3
    # t_{0.975, 8/3} = 3.4198 -> half-width 20.94: [-28.44, 13.44]; resolvable nc * SE / c4 with nc = 4.5488
    # (noncentral t at df 8/3) and c4(8/3) = 0.91226: 4.5488 * 6.1237 / 0.91226 = 30.53
    paired = found[0].paired("rougeL")
    assert lora.score(AVERAGE, "rougeL").mean - badit.score(AVERAGE, "rougeL").mean == pytest.approx(-7.5)
    assert paired["mean"] == pytest.approx(-7.5) and paired["std_error"] == pytest.approx(37.5**0.5)
    assert paired["df"] == pytest.approx(8 / 3)
    half = stats.t.ppf(0.975, 8 / 3) * 37.5**0.5
    assert half == pytest.approx(20.9417, abs=1e-4)
    assert paired["ci95"] == pytest.approx([-7.5 - half, -7.5 + half])
    assert paired["resolvable"] == pytest.approx(30.5344, abs=1e-4)
    assert (paired["examples"], paired["seeds"], paired["tasks"]) == (4, 2, 2)
    assert found[0].paired("exact_match")["mean"] == pytest.approx(-3.75)  # EM is half of every score
    # pissa has seed 3 only, badit seeds 1 and 2: they do not pair
    assert found[1].shared_seeds == [] and found[1].paired("rougeL") is None
    # a group with seeds 1-3 pairs with badit on seeds 1 and 2 only: lora's seeds 1-2 plus a seed 3 that
    # badit lacks give lora's numbers above (n = 4 examples x 2 seeds), seed 3 left out
    extra = _predicted_run(tmp_path / "lora-3", "lora", 3, {"t1": [0.0, 0.0], "t2": [0.0, 0.0]})
    lora3, badit3, _ = seed_groups(load_runs([*folders, extra]))
    assert len(lora3.runs) == 3
    wider = reference_differences([lora3, badit3])[0]
    assert wider.shared_seeds == [1, 2]
    again = wider.paired("rougeL")
    assert (again["mean"], again["std_error"], again["seeds"]) == (
        pytest.approx(-7.5),
        paired["std_error"],
        2,
    )
    assert again["ci95"] == pytest.approx(paired["ci95"])


def test_compare_and_report_show_the_difference_rows_only_where_seeds_pair(tmp_path):
    """`badit compare` adds a table of seed groups (the same rows as the report's score table) where
    groups pair; with no shared seed its output is the run table alone, and the report has no such row."""
    import json
    import re

    from badit.experiments.compare import compare, comparison_json, comparison_table, format_table
    from badit.experiments.report import build_report

    for (method, seed), examples in METHOD_SEEDS.items():
        _predicted_run(tmp_path / "runs" / f"{method}-{seed}", method, seed, examples)
    _predicted_run(tmp_path / "runs" / "pissa-3", "pissa", 3, METHOD_SEEDS["lora", 1])
    folders = sorted((tmp_path / "runs").iterdir())  # badit-1, badit-2, lora-1, lora-2, pissa-3
    runs = compare(folders)
    text = format_table(runs)
    second = text.split("\n\n| seed groups (ROUGE-L)")[1]
    assert text.startswith(comparison_table(runs).terminal())  # the run table is unchanged
    rows = {line.split("|")[1].strip(): line for line in second.splitlines() if line.startswith("|")}
    cells = [c.strip() for c in rows["column − badit (multitask), 95% CI"].split("|")[2:5]]
    # numbers of the test above: -7.50 [-28.44, +13.44]; pissa pairs with no badit seed: '-'
    assert cells == ["(reference)", "-7.50 [-28.44, +13.44] (n = 4 examples x 2 seeds)", "-"]
    resolvable = [
        c.strip() for c in rows["column − badit (multitask) resolvable (80% power)"].split("|")[2:5]
    ]
    assert resolvable == ["(reference)", "≥ 30.53 (n = 4 examples x 2 seeds)", "-"]
    # averages: badit (50 + 55) / 2 = 52.5, std sqrt(12.5) = 3.54; lora 45 ± 7.07; pissa 40
    assert [c.strip() for c in rows["**average**"].split("|")[2:5]] == [
        "**52.50 ± 3.54**",
        "**45.00 ± 7.07**",
        "**40.00**",
    ]
    assert "lora (multitask) (2 seeds)" in second and "Difference resolvable: the smallest" in second
    numbers = comparison_json(runs)
    assert numbers["badit (multitask) seed 1"]["difference_vs_reference"] is None
    versus = numbers["lora (multitask) seed 2"]["difference_vs_reference"]
    assert versus["reference"] == "badit (multitask)" and versus["tasks"] == ["t1", "t2"]
    assert versus["rougeL"]["resolvable"] == pytest.approx(30.5344, abs=1e-4)
    assert versus["exact_match"]["mean"] == pytest.approx(-3.75)
    assert numbers["pissa (multitask)"]["difference_vs_reference"]["rougeL"] is None
    page = build_report([tmp_path / "runs"])
    cells = [re.findall(r"<td>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", page)]
    assert [
        "column − badit (multitask), 95% CI",
        "(reference)",
        "-7.50 [-28.44, +13.44] (n = 4 examples x 2 seeds)",
        "-",
    ] in cells
    resolvable = "column − badit (multitask) resolvable (80% power)"
    assert [resolvable, "(reference)", "≥ 30.53 (n = 4 examples x 2 seeds)", "-"] in cells  # ROUGE-L table
    assert [resolvable, "(reference)", "≥ 15.27 (n = 4 examples x 2 seeds)", "-"] in cells  # EM: half of it
    assert [
        "column − badit (multitask), 95% CI",
        "(reference)",
        "-3.75 [-14.22, +6.72] (n = 4 examples x 2 seeds)",
        "-",
    ] in cells
    # no shared seed: badit seeds 1 and 2 against pissa seed 3 alone -> the compare output is the run table
    # byte for byte, and the page has no difference row
    unpaired = compare([folders[0], folders[1], folders[4]])
    assert format_table(unpaired) == comparison_table(unpaired).terminal()
    assert all(r.versus is None for r in unpaired)
    assert "column −" not in build_report([folders[0], folders[1], folders[4]])
    assert json.dumps(comparison_json(unpaired)).count('"difference_vs_reference": null') == 3


def test_compare_measures_each_seed_against_its_own_single_run_and_pairs_the_groups(tmp_path):
    """`badit compare` over 2 seeds of a multi-task run and 2 seeds of one adapter per task: each column is
    measured against the single run of its own seed, and the table of seed groups gives the interference
    paired by seed and example (the sweep's statistic), worked by hand."""
    import json

    from scipy import stats

    from badit.experiments.compare import compare, format_table

    def run(name, setting, seed, values):
        folder = hand_run(tmp_path / name, "lora", setting, seed, {"t1": sum(values) / len(values)})
        lines = [
            json.dumps({"task": "t1", "id": str(i), "rougeL": v, "exact_match": v})
            for i, v in enumerate(values)
        ]
        (folder / "predictions.jsonl").write_text("\n".join(lines) + "\n")
        return folder

    folders = [
        run("m1", "multitask", 1, [40.0, 60.0]),
        run("m2", "multitask", 2, [50.0, 70.0]),
        run("s1", "single", 1, [50.0, 50.0]),
        run("s2", "single", 2, [70.0, 70.0]),
    ]
    runs = compare(folders)
    # seed 1: 50 - 50 = 0; seed 2: 60 - 70 = -10 (against seed 1's single run it would read 60 - 50 = +10)
    assert [r.interference["rougeL"] for r in runs[:2]] == [0.0, -10.0]
    assert [r.reference for r in runs[:2]] == ["lora (single) seed 1", "lora (single) seed 2"]
    # per example, multi - single: seed 1 [-10, +10], seed 2 [-20, 0]; mean over seeds [-15, +5]: mean -5,
    # variance 200 -> V_examples = 200 / 2 = 100; per seed 0 and -10: variance 50 -> V_seeds = 50 / 2 = 25;
    # SE = sqrt(125) = 11.18; df = 125^2 / (100^2 / (2 - 1) + 25^2 / (2 - 1)) = 15625 / 10625 = 1.4706
    half = stats.t.ppf(0.975, 15625 / 10625) * 125**0.5
    text = format_table(runs).split("| seed groups (ROUGE-L)")[1]
    row = next(line for line in text.splitlines() if line.startswith("| interference vs single, 95% CI"))
    assert f"-5.00 [{-5 - half:+.2f}, {-5 + half:+.2f}] (n = 2 examples x 2 seeds)" in row


def test_a_variant_of_one_method_is_its_own_group_measured_against_its_own_single_runs(tmp_path):
    """Two configurations of badit at one learning rate (the default and the published-code variant) are
    two groups, labelled by the options on which they differ, each measured against its own single runs."""
    from badit.experiments.results import interferences

    default = {"router_init": "zero", "train_router": True, "r": 4}
    published = {"router_init": "random", "train_router": False, "r": 4}
    folders = []
    for name, options, multi in (("d", default, 80.0), ("p", published, 70.0)):
        for seed in (1, 2):
            folders.append(
                hand_run(
                    tmp_path / f"{name}{seed}",
                    "badit",
                    "multitask",
                    seed,
                    {"t1": multi + seed},
                    options=options,
                )
            )
    for name, options, single in (("d", default, 90.0), ("p", published, 95.0)):
        for seed in (1, 2):
            folders.append(
                hand_run(
                    tmp_path / f"{name}s{seed}", "badit", "single", seed, {"t1": single}, options=options
                )
            )
    runs = load_runs(folders)
    assert [r.label for r in runs[:4]] == [  # compare's columns
        "badit (multitask) router_init zero, train_router True seed 1",
        "badit (multitask) router_init zero, train_router True seed 2",
        "badit (multitask) router_init random, train_router False seed 1",
        "badit (multitask) router_init random, train_router False seed 2",
    ]
    groups = seed_groups(runs)
    assert [(g.label, len(g.runs)) for g in groups] == [
        ("badit (multitask) router_init zero, train_router True", 2),
        ("badit (multitask) router_init random, train_router False", 2),
        ("badit (single) router_init zero, train_router True", 2),
        ("badit (single) router_init random, train_router False", 2),
    ]  # r (equal in all) is left out of the labels
    # a folder of an older badit without train_router (an option it did not have yet) joins the default group
    hand_run(
        tmp_path / "old3", "badit", "multitask", 3, {"t1": 83.0}, options={"router_init": "zero", "r": 4}
    )
    labels = [(g.label, len(g.runs)) for g in seed_groups(load_runs([*folders, tmp_path / "old3"]))]
    assert labels[:2] == [
        ("badit (multitask) router_init zero", 3),
        ("badit (multitask) router_init random", 2),
    ]
    found = {i.group.label: (i.reference.label, i.average["rougeL"]) for i in interferences(groups, ["t1"])}
    # default: seeds 81, 82 -> 81.5 - 90 = -8.5; published: 71, 72 -> 71.5 - 95 = -23.5 (not 71.5 - 90)
    assert found == {
        "badit (multitask) router_init zero, train_router True": (
            "badit (single) router_init zero, train_router True",
            pytest.approx(-8.5),
        ),
        "badit (multitask) router_init random, train_router False": (
            "badit (single) router_init random, train_router False",
            pytest.approx(-23.5),
        ),
    }


def test_a_group_holding_one_seed_twice_says_runs_not_seeds(tmp_path):
    """Two folders of one configuration and seed (trained twice) make a group of 2 runs but 1 seed: the
    header says so (its ± is not seed variance), and its difference row is '-' (no pairing by seed)."""
    from badit.experiments.compare import compare, format_table

    for (method, seed), examples in METHOD_SEEDS.items():
        _predicted_run(tmp_path / "runs" / f"{method}-{seed}", method, seed, examples)
    _predicted_run(tmp_path / "runs" / "lora-1-again", "lora", 1, METHOD_SEEDS["lora", 1])
    runs = compare(sorted((tmp_path / "runs").iterdir()))  # badit-1, badit-2, lora-1, lora-1-again, lora-2
    groups = {g.label: g for g in seed_groups(runs)}
    assert groups["badit (multitask)"].counted == "2 seeds"
    assert groups["lora (multitask)"].counted == "3 runs, 2 seeds"  # seeds 1, 1, 2
    second = format_table(runs).split("\n\n| seed groups (ROUGE-L)")[1]
    header = [c.strip() for c in second.splitlines()[0].split("|")[1:3]]  # the rest of the header row
    assert header == ["badit (multitask) (2 seeds)", "lora (multitask) (3 runs, 2 seeds)"]
    rows = {line.split("|")[1].strip(): line for line in second.splitlines() if line.startswith("|")}
    assert [c.strip() for c in rows["column − badit (multitask), 95% CI"].split("|")[2:4]] == [
        "(reference)",
        "-",
    ]
