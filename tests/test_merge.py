"""``badit merge``: task arithmetic and TIES through PEFT's add_weighted_adapter on deltas worked by
hand, and a single-task run merged into a run folder that compare reads."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from badit.experiments.merge import MergeError, check_options, merge_loaded

# two tasks' weight deltas of a 2x2 layer
DELTA_1 = torch.tensor([[3.0, -1.0], [0.5, 2.0]])
DELTA_2 = torch.tensor([[2.0, -2.0], [1.0, 0.1]])


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(2, 2, bias=False)

    def forward(self, x):
        return self.proj(x)


def _two_task_adapters():
    """A rank-2 LoRA per task with A = I, B = delta, alpha = r (scaling 1): ΔW_t = B A = delta_t."""
    config = LoraConfig(r=2, lora_alpha=2, target_modules=["proj"], init_lora_weights=False)
    model = get_peft_model(Toy(), config, adapter_name="t1")
    model.add_adapter("t2", config)
    layer = model.base_model.model.proj
    with torch.no_grad():
        for name, delta in (("t1", DELTA_1), ("t2", DELTA_2)):
            layer.lora_A[name].weight.copy_(torch.eye(2))
            layer.lora_B[name].weight.copy_(delta)
    return model, layer


def test_task_arithmetic_is_the_scaled_sum_of_the_deltas():
    # λ = 0.5: 0.5 * ([[3, -1], [0.5, 2]] + [[2, -2], [1, 0.1]]) = 0.5 * [[5, -3], [1.5, 2.1]]
    #        = [[2.5, -1.5], [0.75, 1.05]]  (exact: PEFT's `cat` stacks the A's and B's, rank 2 + 2 = 4)
    model, layer = _two_task_adapters()
    record = merge_loaded(model, ["t1", "t2"], "task-arithmetic", weight=0.5)
    assert record["combination_type"] == "cat" and list(model.peft_config) == ["default"]
    expected = torch.tensor([[2.5, -1.5], [0.75, 1.05]])
    torch.testing.assert_close(layer.get_delta_weight("default"), expected)
    torch.testing.assert_close(model(torch.eye(2)), torch.eye(2) @ (layer.base_layer.weight + expected).T)


def test_ties_trims_elects_signs_and_averages_the_agreeing_entries():
    # density 0.5 keeps 2 of the 4 entries of each delta, the largest in magnitude:
    #   task 1: 3 and 2    -> [[3, 0], [0, 2]]
    #   task 2: 2 and -2   -> [[2, -2], [0, 0]]   (|1| < 2 is trimmed)
    # sign by total mass: sum [[5, -2], [0, 2]] -> signs [[+, -], [0, +]]
    # disjoint mean of the entries with that sign: [[(3 + 2) / 2, -2 / 1], [0, 2 / 1]] = [[2.5, -2], [0, 2]]
    # λ = 1; the SVD back to rank min(2 + 2, 2) = 2 is exact for a 2x2 layer
    model, layer = _two_task_adapters()
    record = merge_loaded(model, ["t1", "t2"], "ties", weight=1.0, density=0.5)
    assert record["combination_type"] == "ties_svd" and record["svd_rank"] == 2
    torch.testing.assert_close(layer.get_delta_weight("default"), torch.tensor([[2.5, -2.0], [0.0, 2.0]]))
    assert record["svd_relative_error"]["max"] < 1e-6


@pytest.mark.parametrize(
    ("method", "weight", "density", "message"),
    [
        ("dare", 1.0, 0.2, "--method 'dare' is unknown"),
        ("ties", 0.0, 0.2, "--weight must be a positive"),
        ("ties", 1.0, 0.0, "--density must be in"),
    ],
)
def test_options_are_checked(method, weight, density, message):
    with pytest.raises(MergeError, match=message):
        check_options(method, weight, density)


@pytest.mark.slow
def test_a_single_run_merges_into_a_run_folder_that_compare_reads(tmp_path):
    from badit.experiments.config import from_dict
    from badit.experiments.merge import merge_run
    from badit.experiments.results import load_run
    from badit.experiments.settings import run
    from tests.helpers import tiny_run_config

    single = from_dict(tiny_run_config(tmp_path, "lora", "single", training={"max_steps": 2}))
    run(single)
    source = tmp_path / "run-lora-single"
    merged_dir = tmp_path / "merged-ties"
    metrics = merge_run(source, merged_dir, "ties")
    assert set(metrics["tasks"]) == {"demo_copy_words", "demo_reverse_words"}  # evaluated on every task
    record = json.loads((merged_dir / "merge.json").read_text())
    assert record["tasks"] == ["demo_copy_words", "demo_reverse_words"] and record["density"] == 0.2
    # svd_rank = 2 tasks x rank 6 (r 2 x K 3); the tiny model's gate_proj is 64 -> 96
    assert record["svd_rank"] == 12 and 0 <= record["svd_relative_error"]["max"] < 1
    scores = load_run(merged_dir)
    assert scores.setting == "multitask" and scores.tasks == metrics["tasks"]
    assert scores.method == "lora+ties" and metrics["run"]["base_method"] == "lora"  # never taken for lora
    from badit.experiments.folder import RunError

    with pytest.raises(RunError, match="made by `badit merge`, not trained"):
        run(dataclasses.replace(single, output_dir=str(merged_dir)), resume=True)
    assert (merged_dir / "adapter" / "adapter_config.json").is_file()
    # saved and loaded like any run: `badit eval` reads the merged adapter back and predicts the same
    from badit.cli.main import main

    assert main(["eval", str(merged_dir), "--output", str(tmp_path / "reevaluated")]) == 0

    def predictions(folder):
        rows = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]
        return {row["id"]: row["prediction"] for row in rows}

    assert predictions(tmp_path / "reevaluated") == predictions(merged_dir) != {}
    with pytest.raises(MergeError, match="needs a `setting: single` run"):
        merge_run(merged_dir, tmp_path / "again", "task-arithmetic")
    assert not (tmp_path / "again").exists()


def test_only_evaluation_fields_can_be_overridden(tmp_path):
    from badit.experiments.config import from_dict
    from badit.experiments.folder import RunFolder
    from badit.experiments.merge import merge_run

    run = RunFolder(tmp_path / "single")
    run.path.mkdir()
    run.config_file.write_text(from_dict({}).to_yaml())
    assert run.config(("evaluation.split=dev",)).evaluation.split == "dev"  # what merge_run reads
    with pytest.raises(MergeError, match="changes only evaluation fields"):
        merge_run(run.path, tmp_path / "out", "ties", overrides=("training.learning_rate=1",))


@pytest.mark.parametrize("name", ["pissa", "hydralora", "badit"])
def test_only_lora_single_runs_are_merged(tmp_path, name):
    # PiSSA/OLoRA move the base weight, HydraLoRA and BADIT route: their deltas do not add
    from badit.experiments.config import from_dict
    from badit.experiments.folder import RunFolder
    from badit.experiments.merge import merge_run

    run = RunFolder(tmp_path / "single")
    run.path.mkdir()
    run.config_file.write_text(from_dict({"setting": "single", "method": {"name": name}}).to_yaml())
    with pytest.raises(MergeError, match=f"trained method '{name}'; badit merge merges `lora` adapters"):
        merge_run(run.path, tmp_path / "out", "task-arithmetic")
    assert not (tmp_path / "out").exists()


def test_the_command_refuses_a_folder_that_is_not_a_run_in_one_line(tmp_path, capsys):
    from badit.cli.main import main

    code = main(["merge", str(tmp_path), "--method", "ties", "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("badit merge: error:") and "not a run folder" in err
    assert not (tmp_path / "out").exists()
