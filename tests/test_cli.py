"""The `badit` command: train -> eval -> compare on a tiny model, useful --help, errors without tracebacks."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch
import yaml

from badit.cli.main import build_parser, main
from badit.evaluation import interference_score
from tests.helpers import tiny_run_config


def _write_config(tmp_path, name, **kwargs):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tiny_run_config(tmp_path, **kwargs)))
    return path


@pytest.fixture(scope="module")
def trained_runs(tmp_path_factory):
    """Three tiny runs trained once through `badit train` for the tests below: BADIT and LoRA
    multitask, LoRA single-task; returns ({name: folder}, what `badit train` printed)."""
    tmp_path = tmp_path_factory.mktemp("cli")
    steps = {"training": {"max_steps": 3}}
    lora = _write_config(tmp_path, "lora", method_name="lora", **steps)
    single = _write_config(tmp_path, "single", method_name="lora", setting_name="single", **steps)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["train", str(lora), "method.name=badit", f"output_dir={tmp_path / 'badit'}"]) == 0
        assert main(["train", str(lora)]) == 0
        assert main(["train", str(single)]) == 0
    runs = {
        "badit": tmp_path / "badit",
        "lora": tmp_path / "run-lora-multitask",
        "single": tmp_path / "run-lora-single",
    }
    return runs, printed.getvalue()


@pytest.mark.slow
def test_train_writes_the_run_folders(trained_runs):
    runs, printed = trained_runs
    assert "| **average** |" in printed and "run folder:" in printed
    for folder in runs.values():
        for name in ("config.yaml", "metrics.json", "predictions.jsonl", "summary.md"):
            assert (folder / name).is_file(), folder / name
    saved = yaml.safe_load((runs["badit"] / "config.yaml").read_text())
    assert saved["method"]["name"] == "badit" and saved["output_dir"] == str(runs["badit"])


@pytest.mark.slow
def test_eval_recreates_the_numbers_from_the_saved_adapter(trained_runs, tmp_path):
    runs, _ = trained_runs
    # greedy decoding is deterministic: the same predictions and scores
    before = json.loads((runs["lora"] / "metrics.json").read_text())
    assert main(["eval", str(runs["lora"]), "--output", str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert again["tasks"] == before["tasks"]
    assert (tmp_path / "again" / "predictions.jsonl").read_text() == (
        runs["lora"] / "predictions.jsonl"
    ).read_text()


@pytest.mark.slow
def test_compare_reports_the_interference_score(trained_runs, tmp_path, capsys):
    runs, _ = trained_runs
    table_file, json_file = tmp_path / "table.md", tmp_path / "table.json"
    args = ["compare", *map(str, runs.values()), "--output", str(table_file), "--json", str(json_file)]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert table == table_file.read_text()
    numbers = json.loads(json_file.read_text())
    single = json.loads((runs["single"] / "metrics.json").read_text())["tasks"]
    for label, folder in (("badit (multitask)", runs["badit"]), ("lora (multitask)", runs["lora"])):
        multi = json.loads((folder / "metrics.json").read_text())["tasks"]
        expected = interference_score(
            {t: s["rougeL"] for t, s in multi.items()}, {t: s["rougeL"] for t, s in single.items()}
        )
        assert numbers[label]["interference"]["rougeL"] == pytest.approx(expected)
        assert numbers[label]["interference_reference"] == "lora (single)"
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("|")}
    assert set(rows) >= {"demo_copy_words", "demo_reverse_words", "**average**", "interference vs single"}
    # Step sizes: lr 5e-3 everywhere; per-component scale 32 / r = 32 / 2 = 16 for badit, and for
    # lora (rank K*r = 6) its default alpha 32 * 3 = 96 gives 96 / 6 = 16 too.
    assert [c.strip() for c in rows["learning rate"].split("|")[2:5]] == ["0.005"] * 3
    assert [c.strip() for c in rows["effective scale"].split("|")[2:5]] == ["16"] * 3
    assert numbers["lora (multitask)"]["effective_scale"] == 16.0


@pytest.mark.slow
def test_analyze_measures_the_trained_badit_adapter(trained_runs, capsys):
    runs, _ = trained_runs
    # per-task gradients of the trained BADIT adapter, written next to the run
    assert main(["analyze", str(runs["badit"]), "--examples-per-task", "2"]) == 0
    out = capsys.readouterr().out
    analysis = json.loads((runs["badit"] / "analysis" / "analysis.json").read_text())
    tasks = json.loads((runs["badit"] / "metrics.json").read_text())["tasks"]
    assert analysis["tasks"] == sorted(tasks)
    assert len(analysis["expert_usage"]["layers"]) == len(analysis["gradient_conflict"]["layers"]) > 0
    a, b, cosine = analysis["gradient_conflict"]["most_conflicting_pair"]
    assert f"most conflicting pair: {a} vs {b} ({cosine:+.3f})" in out
    assert main(["analyze", str(runs["single"])]) == 2  # one adapter per task: nothing to compare
    assert "single-task run" in capsys.readouterr().err


@pytest.mark.slow
def test_export_of_a_trained_badit_run(trained_runs, tmp_path, capsys):
    from peft import PeftModel
    from safetensors.torch import load_file

    from badit.adapter.export import badit_layers, export_lora
    from badit.experiments.export import task_routing
    from badit.experiments.folder import RunFolder
    from badit.experiments.stage import load_base_model

    runs, _ = trained_runs
    card = (runs["badit"] / "adapter" / "README.md").read_text()
    assert "## BADIT adapter" in card and "| demo_copy_words |" in card  # tasks and scores of the run
    assert (
        main(["export", str(runs["badit"]), "--task", "demo_copy_words", "--output", str(tmp_path / "lora")])
        == 0
    )
    # live router vs the exported fixed routing, on the run's 2 x 3 test prompts: printed and in the card
    out = capsys.readouterr().out
    assert "fixed routing vs the live router on 6 test prompts: next-token logits within" in out
    assert (
        "On the run's 6 test prompts (the first 8 of each task)"
        in (tmp_path / "lora" / "README.md").read_text()
    )
    config = RunFolder(runs["badit"]).config()
    base, tokenizer = load_base_model(config)
    model = PeftModel.from_pretrained(base, str(runs["badit"] / "adapter")).eval()
    routing = task_routing(config, model, tokenizer, ["demo_copy_words"])["demo_copy_words"]
    assert sorted(routing) == sorted(badit_layers(model)) != []  # one (K,) vector per BADIT layer
    for weights in routing.values():
        assert weights.shape == (3,) and abs(float(weights.sum()) - 3.0) < 1e-4  # K=3, preserve: sum K
    # The command wrote the library's export of the task's routing (whose logits test_adapter_export checks).
    export_lora(model, tmp_path / "library", routing)
    written, library = (load_file(tmp_path / d / "adapter_model.safetensors") for d in ("lora", "library"))
    assert written.keys() == library.keys() != set()
    for key in written:
        torch.testing.assert_close(written[key], library[key], rtol=0, atol=1e-6)

    assert main(["export", str(runs["badit"]), "--weights", "1,2", "--output", str(tmp_path / "x")]) == 2
    assert "has 3 experts but the routing has shape (2,)" in capsys.readouterr().err
    assert main(["export", str(runs["lora"]), "--output", str(tmp_path / "x")]) == 2
    assert "not a BADIT adapter" in capsys.readouterr().err
    args = ["export", str(runs["badit"] / "adapter"), "--weights", "1,1,1", "--format", "merged"]
    assert main([*args, "--output", str(tmp_path / "merged")]) == 0
    assert (tmp_path / "merged" / "config.json").is_file()


@pytest.mark.parametrize(
    "command",
    [[], ["train"], ["eval"], ["compare"], ["analyze"], ["report"], ["export"], ["data", "check"], ["demo"]],
)
def test_help_of_each_command(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: badit")
    expected = {
        "train": ["--resume", "section.field=value", "accelerate launch"],
        "eval": ["evaluation.max_examples_per_task"],
        "compare": ["interference", "--metric"],
        "analyze": ["gradients", "--examples-per-task"],
        "report": ["router health", "--output", "sweep"],
        "check": ["Exit status 0"],
        "demo": ["--output", "SmolLM2"],
        "export": ["--task", "--weights", "--format", "2*K*r"],
    }.get(command[-1] if command else "", ["train", "eval", "compare", "report", "analyze", "data", "demo"])
    for word in expected:
        assert word in text, word


def test_errors_are_one_line_without_traceback(tmp_path, capsys):
    config = _write_config(tmp_path, "c", method_name="lora")
    assert main(["train", str(config), "method.nmae=lora"]) == 2
    err = capsys.readouterr().err
    assert "unknown field 'method.nmae'; did you mean 'method.name'?" in err and "Traceback" not in err
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert "no such config file" in capsys.readouterr().err
    assert main(["eval", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err
    assert main(["compare", str(tmp_path)]) == 2
    assert "no metrics.json" in capsys.readouterr().err


def test_data_check_exit_status(tmp_path, capsys):
    tiny_run_config(tmp_path)  # writes the demo data folder
    assert main(["data", "check", str(tmp_path / "data")]) == 0
    assert "demo_copy_words" in capsys.readouterr().out
    (tmp_path / "data" / "demo_copy_words" / "test.json").write_text("{not json")
    assert main(["data", "check", str(tmp_path / "data")]) == 1
    assert "Traceback" not in capsys.readouterr().err


def test_parser_defaults():
    args = build_parser().parse_args(["demo"])
    assert (args.output_dir, args.steps, args.methods) == ("badit-demo", 60, ["lora", "badit"])  # run_demo's


@pytest.mark.slow
def test_demo_with_single_task_runs_reports_interference(tmp_path, capsys):
    from tests.helpers import save_tiny_model

    model_dir = save_tiny_model(tmp_path / "tiny-model")
    out = tmp_path / "demo"
    args = ["demo", "--output", str(out), "--model", str(model_dir), "--steps", "6", "--eval-examples", "2"]
    assert main([*args, "--single"]) == 0
    printed = capsys.readouterr().out
    for run_name in ("lora", "badit", "lora-single", "badit-single"):
        for name in ("config.yaml", "metrics.json", "predictions.jsonl"):
            assert (out / run_name / name).is_file(), (run_name, name)
    single = yaml.safe_load((out / "badit-single" / "config.yaml").read_text())
    assert single["setting"] == "single" and single["training"]["max_steps"] == 1  # 6 steps / 6 tasks
    assert (
        "interference vs single" in printed
        and "interference vs single" in (out / "comparison.md").read_text()
    )
    assert (out / "badit" / "analysis" / "analysis.json").is_file()
    # the demo writes the report and prints its path; the page has every section of a BADIT comparison
    assert f"report (open in a browser): {(out / 'report.html').resolve()}" in printed
    page = (out / "report.html").read_text()
    for title in ("Scores per task", "Interference", "Regrouping over training", "Router health"):
        assert f"<h2>{title}" in page
    assert "badit (multitask) vs badit (single)" in page


@pytest.mark.slow
def test_report_command_and_router_warning(tmp_path, capsys):
    # learning rate 1e-9: the zero-initialised router stays uniform -> one warning at the end
    config = _write_config(
        tmp_path, "frozen", method_name="badit", training={"max_steps": 2, "learning_rate": 1e-9}
    )
    assert main(["train", str(config)]) == 0
    err = capsys.readouterr().err
    assert err.count("badit train: warning: routing never left uniform") == 1
    run_dir = tmp_path / "run-badit-multitask"
    out_file = tmp_path / "out" / "page.html"
    assert main(["report", str(run_dir), "--output", str(out_file)]) == 0
    assert f"report: {out_file.resolve()}" in capsys.readouterr().out
    page = out_file.read_text()
    assert "routing never left uniform" in page and str(run_dir / "metrics.json") in page
    assert main(["report", str(tmp_path / "model"), "--output", str(tmp_path / "x.html")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("badit report: error: ") and "not a run folder" in err and "Traceback" not in err
    assert not (tmp_path / "x.html").exists()
