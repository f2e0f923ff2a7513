"""`badit report`: the page built from real tiny run folders, its numbers, bad input, and Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from badit.experiments.folder import RunFolder
from badit.experiments.report import ReportError, build_report, collect, write_report
from badit.experiments.results import AVERAGE, interferences, seed_groups
from tests.helpers import hand_run, tiny_run_config

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """Tiny real runs as the demo makes them (lora and badit multitask and single, analysis), plus a
    second lora seed and a continual badit run: about 15 s on 2 CPU cores."""
    from badit.experiments.analyze import analyze_run
    from badit.experiments.config import from_dict
    from badit.experiments.settings import run

    root = tmp_path_factory.mktemp("report-runs")
    regroup = {"regroup_every": 2, "regroup_until": 0.7}
    plans = [
        ("badit", "multitask", {}, regroup),
        ("lora", "multitask", {}, {}),
        ("lora", "multitask", {"seed": 1, "output_dir": str(root / "run-lora-multitask-seed1")}, {}),
        ("badit", "single", {}, regroup),
        ("badit", "continual", {}, regroup),
    ]
    for method, setting, top, method_section in plans:
        config = tiny_run_config(root, method, setting, method=method_section)
        run(from_dict({**config, **top}, source="test"), overwrite=True)
    analyze_run(root / "run-badit-multitask", examples_per_task=2)
    return root


def _cells(page: str) -> list[list[str]]:
    return [re.findall(r"<td>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", page)]


@pytest.mark.slow
def test_page_from_trained_runs_shows_their_numbers_and_files(trained):
    page = build_report([trained])
    runs = {r.path.name: r for r in collect([trained]).runs}
    assert len(runs) == 5
    for title in (
        "Scores per task",
        "Interference",
        "Continual learning",
        "Training curves",
        "Regrouping over training",
        "Router health",
        "Gradient conflict and neuron overlap",
    ):
        assert f"<h2>{title}" in page
    # every section names its files; the metrics, logs and analysis of the runs are among them
    assert str(trained / "run-badit-multitask" / "metrics.json") in page
    assert str(trained / "run-badit-multitask" / "logs" / "regroup.jsonl") in page
    assert str(trained / "run-badit-multitask" / "analysis" / "analysis.json") in page
    assert (
        str(trained / "run-badit-continual" / "stages" / "01-demo_reverse_words" / "logs" / "train_log.jsonl")
        in page
    )

    # the regroup table: components moved at each regroup = the sum over layers in regroup.jsonl
    regroups = [
        json.loads(line)
        for line in (trained / "run-badit-multitask" / "logs" / "regroup.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in regroups] == [2, 4]
    rows = [c for c in _cells(page) if c[:1] == ["badit (multitask)"] and len(c) == 6]
    assert [(c[2], c[3]) for c in rows] == [
        (str(r["step"]), str(sum(layer["moved"] for layer in r["layers"].values()))) for r in regroups
    ]
    # routing per task: the mean load of each expert over layers, as in analysis.json
    analysis = json.loads((trained / "run-badit-multitask" / "analysis" / "analysis.json").read_text())
    usage = analysis["expert_usage"]["usage"]  # (L, T, K)
    task0 = analysis["tasks"][0]
    expected = " / ".join(
        f"{sum(layer[0][k] for layer in usage) / len(usage):.2f}" for k in range(len(usage[0][0]))
    )
    assert [task0, expected] == [c[:2] for c in _cells(page) if c[:1] == [task0] and " / " in c[1]][0]
    # the two lora seeds form one group of 2; badit (multitask) has its single-task reference
    assert "lora (multitask) (2 seeds)" in page
    assert "badit (multitask) vs badit (single)" in page
    # continual: AP from metrics.json
    ap = runs["run-badit-continual"].continual["rougeL"]["AP"]
    continual_row = [c for c in _cells(page) if c[:1] == ["badit (continual)"] and len(c) == 9][0]
    assert continual_row[1] == f"{ap:.2f}"  # run + AP, forgetting, BWT, FWT for 2 metrics
    # no external URL anywhere; every image embedded
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", page)
    assert len(re.findall(r'<img src="data:image/png;base64,', page)) == page.count("<img ")


def test_seed_spread_and_interference_by_hand(tmp_path):
    hand_run(tmp_path / "sweep" / "lora-s0", "lora", "multitask", 0, {"t1": 40.0, "t2": 60.0})
    hand_run(tmp_path / "sweep" / "lora-s1", "lora", "multitask", 1, {"t1": 50.0, "t2": 80.0})
    hand_run(tmp_path / "single", "lora", "single", 0, {"t1": 50.0, "t2": 70.0})
    collection = collect([tmp_path / "sweep", tmp_path / "single"])  # a sweep folder is taken as it is
    groups = seed_groups(collection.runs)
    multi = groups[0]
    # t1: mean (40 + 50) / 2 = 45, sample std sqrt(((40-45)^2 + (50-45)^2) / 1) = sqrt(50) = 7.07
    # t2: mean 70, std sqrt(200) = 14.14; average over tasks per seed 50 and 65 -> mean 57.5, std 10.61
    assert multi.score("t1", "rougeL").mean == pytest.approx(45.0)
    assert multi.score("t1", "rougeL").std == pytest.approx(50**0.5)
    assert multi.score(AVERAGE, "rougeL").mean == pytest.approx(57.5)
    assert multi.score(AVERAGE, "rougeL").std == pytest.approx(112.5**0.5)
    assert groups[1].score("t1", "rougeL").std is None
    # interference: t1 45 - 50 = -5, t2 70 - 70 = 0, mean -2.5; EM is half of it
    (found,) = interferences(groups, collection.shared_tasks)
    assert found.per_task["t1"]["rougeL"] == pytest.approx(-5.0)
    assert found.average == pytest.approx({"rougeL": -2.5, "exact_match": -1.25})
    page = build_report([tmp_path / "sweep", tmp_path / "single"])
    assert "45.00 ± 7.07" in page and "57.50 ± 10.61" in page
    assert ["interference score (mean)", "-2.50"] in _cells(page)
    assert ["resolvable (80% power)", "-"] in _cells(page)  # no predictions.jsonl: no interval


def test_issue_19_baselines_stand_beside_badit_under_their_own_labels(tmp_path):
    # labels as metrics.json writes them (folder.method_label): a +pcgrad run and a badit merge run are
    # never grouped with plain lora; the lora single run is the interference reference of all three
    for name, label, t1 in [
        ("badit", "badit", 40.0),
        ("lora", "lora", 30.0),
        ("pcgrad", "lora+pcgrad", 34.0),
        ("ties", "lora+ties", 28.0),
        ("hydra", "hydralora", 36.0),
    ]:
        hand_run(tmp_path / name, label, "multitask", 0, {"t1": t1, "t2": 50.0})
    hand_run(tmp_path / "single", "lora", "single", 0, {"t1": 38.0, "t2": 50.0})
    folders = [tmp_path / n for n in ("badit", "lora", "pcgrad", "ties", "hydra", "single")]
    groups = seed_groups(collect(folders).runs)
    assert [g.label for g in groups] == [
        "badit (multitask)",
        "lora (multitask)",
        "lora+pcgrad (multitask)",
        "lora+ties (multitask)",
        "hydralora (multitask)",
        "lora (single)",
    ]
    # interference on t1 (t2 equal): 34 - 38 = -4 -> mean over 2 tasks -2; ties 28 - 38 -> -5
    found = {i.group.method: i.average["rougeL"] for i in interferences(groups, ["t1", "t2"])}
    assert found["lora+pcgrad"] == pytest.approx(-2.0) and found["lora+ties"] == pytest.approx(-5.0)
    page = build_report(folders)
    # average row: (40 + 50) / 2 = 45, lora 40, pcgrad 42, ties 39, hydralora 43, single 44
    assert ["average", "45.00", "40.00", "42.00", "39.00", "43.00", "44.00"] in _cells(page)


def test_sweep_folder_gives_its_test_and_single_runs(tmp_path):
    sweep = tmp_path / "sweep"
    (sweep / "sweep.json").parent.mkdir()
    (sweep / "sweep.json").write_text('{"schema": "badit-sweep/1"}')
    hand_run(sweep / "select" / "badit-lr0.001", "badit", "multitask", 1, {"t1": 99.0}, lr=1e-3, split="dev")
    hand_run(sweep / "test" / "badit-seed1", "badit", "multitask", 1, {"t1": 30.0}, lr=5e-4)
    hand_run(sweep / "test" / "badit-seed2", "badit", "multitask", 2, {"t1": 34.0}, lr=5e-4)
    hand_run(sweep / "single" / "badit", "badit", "single", 1, {"t1": 40.0}, lr=5e-4)
    collection = collect([sweep])
    assert [r.path.name for r in collection.runs] == ["badit-seed1", "badit-seed2", "badit"]  # no select/ run
    groups = seed_groups(collection.runs)
    assert [(g.label, len(g.runs)) for g in groups] == [("badit (multitask)", 2), ("badit (single)", 1)]
    # (30 + 34) / 2 = 32; 32 - 40 = -8
    assert interferences(groups, ["t1"])[0].average["rougeL"] == pytest.approx(-8.0)
    # learning rates tell two groups of one method apart in their labels
    hand_run(tmp_path / "lr2", "badit", "multitask", 1, {"t1": 20.0}, lr=2e-4)
    labels = [g.label for g in seed_groups(collect([sweep, tmp_path / "lr2"]).runs)]
    assert labels == ["badit (multitask) lr 0.0005", "badit (single)", "badit (multitask) lr 0.0002"]


def test_runs_on_different_task_sets_keep_the_shared_tasks(tmp_path):
    hand_run(tmp_path / "a", "lora", "multitask", 0, {"t1": 10.0, "t2": 20.0})
    hand_run(tmp_path / "b", "badit", "multitask", 0, {"t1": 30.0, "t3": 40.0})
    page = build_report([tmp_path / "a", tmp_path / "b"])
    assert "Tasks compared (1): t1." in page
    assert "lora (multitask): t2; badit (multitask): t3" in page
    # the averages are over t1 only: 10 and 30
    assert [c for c in _cells(page) if c[:1] == ["average"]][0] == ["average", "10.00", "30.00"]
    hand_run(tmp_path / "c", "badit", "multitask", 1, {"t4": 1.0})
    with pytest.raises(ReportError, match="share no task"):
        build_report([tmp_path / "a", tmp_path / "c"])


def test_bad_inputs_give_one_line_errors_and_no_page(tmp_path):
    out = tmp_path / "report.html"
    previous = '<html><head><meta name="generator" content="badit report"></head>previous page</html>'
    out.write_text(previous)  # an earlier report: one that write_report may replace
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        ReportError, match=r"empty: not a run folder \(no config.yaml\) and no run folder inside"
    ):
        write_report([tmp_path / "empty"], out)
    with pytest.raises(ReportError, match="no such folder"):
        write_report([tmp_path / "missing"], out)
    unfinished = hand_run(tmp_path / "unfinished", "lora", "multitask", 0, {"t1": 1.0})
    (unfinished / "metrics.json").unlink()
    with pytest.raises(ReportError, match=r"unfinished: no metrics.json yet .*badit train .* --resume"):
        write_report([unfinished], out)
    broken = hand_run(tmp_path / "broken", "lora", "multitask", 0, {"t1": 1.0})
    (broken / "metrics.json").write_text('{"tasks": {"t1": {"rougeL": "x"}}, "average": {}}')
    # the one metrics.json check (badit.experiments.folder.metrics_problem), as in `badit compare`
    with pytest.raises(
        ReportError, match=r"not a badit metrics file \('tasks.t1.rougeL' is missing or not a number\)"
    ):
        write_report([broken], out)
    assert out.read_text() == previous  # nothing half-written


def _chromium(*args: str, user_dir: Path) -> subprocess.CompletedProcess:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--host-resolver-rules=MAP * ~NOTFOUND",  # even if a request were made, nothing resolves
        f"--user-data-dir={user_dir}",
    ]
    return subprocess.run([str(CHROMIUM), *flags, *args], capture_output=True, text=True, timeout=120)


PROBE = (
    "<script>window.addEventListener('load', () => { const im = [...document.images];"
    " document.body.dataset.images = im.length;"
    " document.body.dataset.loaded = im.filter(i => i.complete && i.naturalWidth > 0).length; });</script>"
)


def _page_requests(net_log: Path) -> list[str]:
    """URLs the page asked for (requests with an initiator; the browser's own services have none)."""
    log = json.loads(net_log.read_text())
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return [
        e["params"]["url"]
        for e in log["events"]
        if e["type"] == start and e.get("params", {}).get("initiator") not in (None, "not an origin")
    ]


def _load(page: Path, tmp: Path) -> tuple[dict[str, str], list[str]]:
    probe = page.with_name("probe.html")
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    result = _chromium(
        f"--log-net-log={tmp / 'net.json'}",
        "--virtual-time-budget=5000",
        "--dump-dom",
        probe.as_uri(),
        user_dir=tmp / "profile-dom",
    )
    body = re.search(r"<body([^>]*)>", result.stdout)
    attributes = dict(re.findall(r'data-(\w+)="([^"]*)"', body.group(1))) if body else {}
    return attributes, _page_requests(tmp / "net.json")


@pytest.mark.slow
@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium (/usr/bin/chromium): apt-get install chromium"
)
def test_demo_sized_report_in_headless_chromium(trained, tmp_path):
    import numpy as np
    from PIL import Image

    demo = tmp_path / "demo"  # a demo-like folder: lora and badit multitask, badit single, analysis
    for name in ("run-lora-multitask", "run-badit-multitask", "run-badit-single"):
        shutil.copytree(trained / name, demo / name)  # each exists (the fixture); a missing one fails here
    page = write_report([demo], tmp_path / "report.html")

    shot = tmp_path / "shot.png"
    _chromium(
        "--hide-scrollbars",
        "--window-size=1280,2400",
        f"--screenshot={shot}",
        page.as_uri(),
        user_dir=tmp_path / "p1",
    )
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape == (2400, 1280)
    assert pixels.std() > 20  # not blank: text, tables and plots
    assert (pixels < 100).mean() > 0.01  # dark pixels (text, axes) cover more than 1%

    attributes, requests = _load(page, tmp_path)
    assert int(attributes["images"]) >= 6
    assert attributes["loaded"] == attributes["images"]
    assert requests == []

    # the check can fail: an image from the network is caught (and does not load)
    bad = tmp_path / "bad.html"
    bad.write_text(page.read_text().replace("</main>", '<img src="http://example.invalid/x.png"></main>'))
    attributes, requests = _load(bad, tmp_path / "again")
    assert int(attributes["loaded"]) == int(attributes["images"]) - 1
    assert requests == ["http://example.invalid/x.png"]


@pytest.mark.slow
def test_router_health_is_logged_during_training(trained):
    logs = trained / "run-badit-multitask" / "logs"
    records = [json.loads(line) for line in (logs / "router_health.jsonl").read_text().splitlines()]
    # logging_steps 1 in the tiny config: one record per optimizer step, 6 steps
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    last = records[-1]
    assert sorted(last["layers"]) == ["model.layers.0.mlp.gate_proj", "model.layers.1.mlp.gate_proj"]
    for layer in last["layers"].values():
        assert len(layer["load"]) == 3 and sum(layer["load"]) == pytest.approx(1.0)
        assert 0.0 <= layer["entropy"] <= 1.0
    loads = [v for layer in last["layers"].values() for v in layer["load"]]
    assert last["summary"]["min_load"] == pytest.approx(min(loads))
    # the same summary reaches the Trainer's log records (TensorBoard, train_log.jsonl)
    train = [json.loads(line) for line in (logs / "train_log.jsonl").read_text().splitlines()]
    at_six = [r for r in train if r["step"] == 6 and "loss" in r][0]
    assert at_six["router/min_load"] == pytest.approx(last["summary"]["min_load"])
    # a LoRA run has no router: no file
    assert not (trained / "run-lora-multitask" / "logs" / "router_health.jsonl").exists()
    # the trained router moved away from uniform (learning rate 5e-3, 6 steps), no warning
    from badit.training.router_logging import router_warning

    assert last["summary"]["deviation"] > 0.01
    run = RunFolder(trained / "run-badit-multitask")
    assert router_warning(run.path, run.router_logs()) is None


def test_router_warning_names_collapse_and_the_adapter(tmp_path):
    from badit.training.router_logging import router_warning

    collapsed = {"load": [0.95, 0.03, 0.02], "entropy": 0.1, "top_share": 0.95, "deviation": 0.6}
    healthy = {"load": [0.4, 0.3, 0.3], "entropy": 0.9, "top_share": 0.4, "deviation": 0.2}
    for stage, layer in (("00-a", healthy), ("01-b", collapsed)):
        logs = tmp_path / "stages" / stage / "logs"
        logs.mkdir(parents=True)
        record = {"step": 6, "layers": {"l0": layer, "l1": layer}}
        (logs / "router_health.jsonl").write_text(
            json.dumps({"step": 1, "layers": {}}) + "\n" + json.dumps(record) + "\n"
        )
    warning = router_warning(tmp_path, RunFolder(tmp_path).router_logs())
    assert warning.startswith(
        "routing collapsed: one expert takes at least 95% of the weight in every one of the 2 layers"
    )
    assert "[stages/01-b]" in warning


def _badithand_run(root: Path, usage: list, layers: list[str]) -> Path:
    """A BADIT multitask run folder by hand: settings, 30 logged steps of 21 per epoch with
    regroup_until 0.5 (so no regroup can happen), a router log, predictions and an analysis."""
    folder = hand_run(root / "badit", "badit", "multitask", 0, {"t1": 40.0, "t2": 60.0})
    config = {
        "name": "badit",
        "training": {"learning_rate": 2e-4, "max_steps": 30},
        "evaluation": {"split": "test"},
        "method": {
            "name": "badit",
            "num_experts": 2,
            "r": 4,
            "lora_alpha": 32,
            "target_modules": ["gate_proj"],
            "regroup_every": "epoch",
            "regroup_until": 0.5,
        },
    }
    (folder / "config.yaml").write_text(json.dumps(config))
    logs = folder / "logs"
    logs.mkdir()
    (logs / "train_log.jsonl").write_text(
        "".join(json.dumps({"step": s, "epoch": s / 21, "loss": 1.0 / s}) + "\n" for s in range(1, 31))
    )
    healthy = {"load": [0.6, 0.4], "entropy": 0.97, "top_share": 0.6, "deviation": 0.1}
    record = {
        "step": 30,
        "layers": {name: healthy for name in layers},
        "summary": {"entropy": 0.97, "top_share": 0.6, "deviation": 0.1, "min_load": 0.4},
    }
    (logs / "router_health.jsonl").write_text(json.dumps(record) + "\n")
    predictions = [
        {
            "task": t,
            "id": f"{t}-{i}",
            "prompt": f"Input: {t} number {i}\nOutput:",
            "prediction": f"p{i}",
            "references": [f"r{i}", f"s{i}"],
        }
        for t in ("t1", "t2")
        for i in range(5)
    ]
    (folder / "predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in predictions))
    (folder / "analysis").mkdir()
    analysis = {"tasks": ["t1", "t2"], "expert_usage": {"layers": layers, "usage": usage}}
    (folder / "analysis" / "analysis.json").write_text(json.dumps(analysis))
    return folder


def test_report_settings_samples_layer_order_verdicts_and_why_no_regroup(tmp_path):
    from badit.experiments.report.collect import label_runs, load_run
    from badit.experiments.report.dynamics import _usage

    layers = [f"model.layers.{i}.mlp.gate_proj" for i in (0, 1, 10, 2)]  # text order, as analysis wrote it
    same = [[0.5, 0.5], [0.5, 0.5]]  # both tasks route exactly alike in every layer
    usage = [same, same, same, same]
    usage[2] = [[0.7, 0.3], [0.7, 0.3]]  # layer 10 is told apart by its values
    folder = _badithand_run(tmp_path, usage, layers)
    page = build_report([folder])
    cells = _cells(page)
    # settings: method, setting, seed, lr, steps, K, r, alpha, targets from config.yaml
    assert [
        "badit (multitask)",
        "badit",
        "multitask",
        "0",
        "0.0002",
        "30 steps",
        "2",
        "4",
        "32",
        "gate_proj",
    ] in cells
    # samples: the first 3 of each task, references joined, the run's prediction beside them
    samples = [c for c in cells if len(c) == 4 and c[0] in ("t1", "t2") and " | " in c[2]]
    assert [(c[0], c[2], c[3]) for c in samples] == [
        (t, f"r{i} | s{i}", f"p{i}") for t in ("t1", "t2") for i in range(3)
    ]
    # layers in numeric order 0, 1, 2, 10, their usage rows moved with them
    run = load_run(folder)
    label_runs([run])
    _, ordered, ordered_usage = _usage(run)
    assert [name.split(".")[2] for name in ordered] == ["0", "1", "2", "10"]
    assert ordered_usage[3].tolist() == [[0.7, 0.3], [0.7, 0.3]]
    # training batches: neither collapsed nor uniform; per task: every task routes alike (distance 0):
    # the verdict says so instead of "healthy"
    assert "healthy" not in page
    assert "neither collapsed nor uniform, but every task routes alike" in page
    # why no regroup: first regroup at the end of epoch 1 (step 21) > 0.5 x 30 = 15
    assert (
        "no regroup logged: this run never regroups: the first regroup would fall at the end of epoch 1, step 21"
        in page
    )
    # a multitask run: no continual note
    assert "Continual runs" not in page


def test_score_cells_carry_the_seed_and_example_interval_and_counts(tmp_path):
    for seed in (0, 1):
        folder = hand_run(tmp_path / f"lora-s{seed}", "lora", "multitask", seed, {"t1": 50.0})
        records = [
            {"task": "t1", "id": str(i), "rougeL": v, "exact_match": v / 2}
            for i, v in enumerate((40, 50, 60))
        ]
        (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    page = build_report([tmp_path])
    # both seeds score the 3 examples 40, 50, 60: no seed variance; example variance
    # var(40, 50, 60) / 3 = 100 / 3, standard error 5.774, df = 3 examples - 1 task = 2, t(0.975, 2) = 4.303:
    # 50 +- 24.84 -> [25.16, 74.84]
    row = [c for c in _cells(page) if c[:1] == ["t1 (n=3)"]][0]
    assert row[1] == "50.00 ± 0.00 [25.16, 74.84]"
    assert "lora (multitask) (2 seeds)" in page
