"""`badit report` reads run folders and draws figures without importing torch, transformers or PEFT
(issue 21: the report took 9 s of torch/PEFT imports before drawing anything)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.helpers import hand_run
from tests.test_report import _badithand_run

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "peft", "datasets")


def test_report_over_run_folders_imports_no_heavy_library(tmp_path):
    # a BADIT run with router log, analysis (routing per task), predictions and a schedule that never
    # regroups, a LoRA run and single-task runs (interference): every section of the page has input
    layers = [f"model.layers.{i}.mlp.gate_proj" for i in (0, 1)]
    _badithand_run(tmp_path, [[[0.6, 0.4], [0.5, 0.5]], [[0.7, 0.3], [0.4, 0.6]]], layers)
    hand_run(tmp_path / "lora", "lora", "multitask", 0, {"t1": 30.0, "t2": 50.0})
    hand_run(tmp_path / "single", "lora", "single", 0, {"t1": 35.0, "t2": 55.0})
    page = tmp_path / "report.html"
    # `python -m badit.cli.main report ...` as run from a shell; an exit hook prints what was imported
    code = f"""
import atexit, json, runpy, sys
atexit.register(lambda: print(json.dumps(sorted(sys.modules))))
sys.argv = ["badit", "report", {str(tmp_path)!r}, "--output", {str(page)!r}]
runpy.run_module("badit.cli.main", run_name="__main__")
"""
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    modules = set(json.loads(result.stdout.splitlines()[-1]))
    assert [m for m in HEAVY if m in modules] == []
    # the parts that used to pull torch in did run: router verdicts, the interval, the regroup schedule
    assert {
        "badit.analysis.router_health",
        "badit.evaluation.statistics",
        "badit.regrouping.schedule",
    } <= modules
    html = page.read_text()
    assert "Router health" in html and "no regroup logged: this run never regroups" in html


def test_lazy_package_names_stay_the_functions_after_their_modules_are_imported():
    # importing a submodule sets the package attribute of its name; no exported name is a submodule's
    code = """
import json
import badit.analysis, badit.evaluation, badit.regrouping
import badit.analysis.conflict, badit.analysis.coactivation, badit.analysis.report
import badit.evaluation.scoring, badit.evaluation.generate, badit.evaluation.metrics
import badit.regrouping.core, badit.regrouping.schedule
out = {}
for package in (badit.analysis, badit.evaluation, badit.regrouping):
    for name in package.__all__:
        out[f"{package.__name__}.{name}"] = type(getattr(package, name)).__name__
print(json.dumps(out))
"""
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300, check=True
    )
    kinds = json.loads(result.stdout)
    assert len(kinds) == 7 + 11 + 11
    assert kinds["badit.analysis.gradient_conflict"] == "function"
    assert kinds["badit.evaluation.evaluate"] == "function"
    assert kinds["badit.regrouping.RegroupPlan"] == "type"
    assert {k for k, v in kinds.items() if v == "module"} == set()
