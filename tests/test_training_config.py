"""Run configuration: paper defaults, YAML + dotted overrides, and error messages that name the fix."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from peft import LoraConfig

from badit.experiments.config import ConfigError, RunConfig, from_dict, load_config
from badit.training.methods import build_peft_config, mixture_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_defaults_are_the_papers():
    c = RunConfig()
    assert (c.training.learning_rate, c.training.lr_scheduler_type, c.training.warmup_ratio) == (
        2e-4,
        "cosine",
        0.03,
    )
    m = c.method
    assert (m.name, m.r, m.num_experts, m.top_k, m.lora_alpha, m.lora_dropout) == (
        "badit",
        4,
        6,
        None,
        32,
        0.05,
    )
    assert mixture_config(m).top_k == 6  # None: dense routing over the K = 6 experts
    assert m.target_modules == ["gate_proj"] and c.data.max_target_length == 50
    assert (m.regroup_every, m.regroup_until) == ("epoch", 0.5)


PUBLISHED = {
    "lora_dropout": 0.0,
    "router_scale": "paper",
    "router_init": "random",
    "train_router": False,
    "regroup_signal": "last_batch",
    "regroup_similarity": "signed",
    "gate": "components",
    "router_input": "raw",
}


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load_with_paper_hyperparameters(path):
    config = load_config(path)
    default = RunConfig()
    if path.name == "published_code.yaml":  # the public code's choices, and only those, differ
        assert dataclasses.replace(default.method, **PUBLISHED) == config.method
    elif path.name == "interference.yaml":
        # the generated benchmark's budget is its own: 3 epochs (150 steps) that regroup every 15
        # steps in the first half, one expert per task (4); answers of at most 4 words (<= 16
        # tokens); its learning rate is the middle of its sweep's grid (sweeps/interference_cpu.yaml)
        assert dataclasses.replace(default.method, regroup_every=15, num_experts=4) == config.method
        assert (config.data.path, config.data.max_target_length) == ("generated:interference", 16)
        return
    else:
        assert config.method == default.method
    assert config.training.learning_rate == default.training.learning_rate
    assert config.data.max_target_length == 50


VARIANT_SWEEPS = {
    name: "interference_cpu.yaml"
    for name in (
        "interference_cpu_published.yaml",
        "interference_cpu_routing.yaml",  # the routing study (docs/benchmarks.md): its variants of badit
        "interference_cpu_oracle.yaml",
        "interference_cpu_paper_routing.yaml",
    )
}


@pytest.mark.parametrize("path", sorted((CONFIGS / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_sweep_files_load(path):
    from badit.experiments.sweep import load_sweep

    sweep = load_sweep(path)
    # every shipped sweep compares badit with a baseline over at least 3 seeds; a variant sweep (one
    # method under other settings) is compared with its main sweep's runs: same base, grid and seeds
    assert "badit" in sweep.methods and len(sweep.seeds) >= 3
    if path.name in VARIANT_SWEEPS:
        main = load_sweep(path.parent / VARIANT_SWEEPS[path.name])
        assert (sweep.base, sweep.learning_rates, sweep.seeds) == (main.base, main.learning_rates, main.seeds)
        assert set(sweep.methods) < set(main.methods)
    else:
        assert len(sweep.methods) >= 2
    # the data path works from any clone (relative to the repository root), not one machine's path
    assert not Path(sweep.overrides.get("data.path", "../shared/data/superni")).is_absolute()
    if len(sweep.learning_rates) > 1:  # a comparison (not the one-lr diagnostic): a grid that can bracket
        assert len(sweep.learning_rates) >= 3
        # the controls: SVD init alone, no regrouping (a variant's controls are in its main sweep)
        if load_config(sweep.base).setting == "multitask" and path.name not in VARIANT_SWEEPS:
            assert {"pissa", "svd-moe"} <= set(sweep.methods)


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "method:\n  name: lora\ntraining:\n  learning_rate: 2e-4\n"
    )  # YAML 1.1 reads 2e-4 as a string
    config = load_config(
        path,
        [
            "training.learning_rate=1e-3",
            "data.tasks=[b, a]",
            "method.regroup_every=50",
            "method.target_modules=all-linear",
            "evaluation.max_examples_per_task=null",
            "seed=7",
        ],
    )
    assert config.training.learning_rate == pytest.approx(1e-3)
    assert config.data.tasks == ["b", "a"]
    assert config.method.regroup_every == 50 and config.method.target_modules == "all-linear"
    assert config.evaluation.max_examples_per_task is None and config.seed == 7
    assert load_config(path).training.learning_rate == pytest.approx(2e-4)


def test_round_trip_through_yaml():
    config = from_dict({"method": {"name": "pissa", "target_modules": ["q_proj", "v_proj"]}, "seed": 3})
    import yaml

    assert from_dict(yaml.safe_load(config.to_yaml())) == config


@pytest.mark.parametrize(
    "data, expected",
    [
        ({"method": {"nmae": "lora"}}, "unknown field 'method.nmae'; did you mean 'method.name'?"),
        ({"traning": {}}, "unknown field 'traning'; did you mean 'training'?"),
        ({"training": {"learning_rate": "fast"}}, "training.learning_rate must be a number, got 'fast'"),
        ({"training": {"max_steps": 2.5}}, "training.max_steps must be an integer, got 2.5"),
        (
            {"method": {"name": "lorra"}},
            "method.name 'lorra' is unknown (did you mean 'lora'?); use one of badit,",
        ),
        ({"method": {"top_k": 8}}, "method.top_k=8 is not in [1, num_experts=6]; set top_k between 1 and"),
        (
            {"method": {"regroup_every": "often"}},
            "method.regroup_every='often' is neither 'epoch' nor a positive integer; use 'epoch' or",
        ),
        (
            {"model": {"dtype": "fp8"}},
            "model.dtype must be one of auto, float32, bfloat16, float16, got 'fp8'",
        ),
        ({"setting": "joint"}, "setting 'joint' is unknown; use one of multitask, single, continual"),
        (
            {"data": {"split_sizes": {"trian": 5}}},
            "data.split_sizes: unknown key(s) trian; use train, dev, test, seed",
        ),
        (
            {"training": {"max_steps": -1, "num_train_epochs": 0}},
            "set training.num_train_epochs > 0 or training.max_steps > 0",
        ),
    ],
)
def test_errors_name_the_field_and_the_fix(data, expected):
    with pytest.raises(ConfigError) as error:
        from_dict(data, source="run.yaml")
    assert str(error.value).startswith("run.yaml: ")
    assert expected in str(error.value)


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: [unclosed\n")
    with pytest.raises(ConfigError, match=f"{bad}: invalid YAML"):
        load_config(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(bad)
    bad.write_text("seed: 1\n")
    with pytest.raises(ConfigError, match="expected section.field=value"):
        load_config(bad, ["training.learning_rate"])


@pytest.mark.parametrize("method, init", [("lora", True), ("olora", "olora"), ("pissa", "pissa_niter_16")])
def test_lora_baselines_match_badit_rank_and_targets(method, init):
    config = from_dict(
        {"method": {"name": method, "r": 4, "num_experts": 6, "target_modules": ["gate_proj"]}}
    )
    peft_config = build_peft_config(config.method)
    assert isinstance(peft_config, LoraConfig)
    # alpha 32 * K = 192: per-component scale 192 / 24 = 8 = BADIT's 32 / 4 (docs/method.md, "Step sizes")
    assert peft_config.r == 24 and peft_config.lora_alpha == 192 and peft_config.lora_dropout == 0.05
    assert set(peft_config.target_modules) == {"gate_proj"} and peft_config.init_lora_weights == init


@pytest.mark.parametrize(
    "method, init, regroup", [("badit", "svd", True), ("svd-moe", "svd", False), ("loramoe", "random", False)]
)
def test_mixture_methods(method, init, regroup):
    from badit import BaditConfig

    peft_config = build_peft_config(from_dict({"method": {"name": method, "regroup_every": 10}}).method)
    assert isinstance(peft_config, BaditConfig)
    assert (peft_config.init, peft_config.regroup, peft_config.regroup_every) == (init, regroup, 10)
    assert (peft_config.r, peft_config.num_experts, peft_config.top_k) == (4, 6, 6)


def test_the_settings_checked_in_configs_are_the_settings_that_run():
    from badit.experiments import config, settings

    assert tuple(settings.SETTINGS) == config.SETTINGS == ("multitask", "single", "continual")


def test_method_defaults_are_the_adapters():
    # One place for defaults: MethodConfig takes BaditConfig's, and the BaditConfig built from the
    # default method equals a default BaditConfig (top_k None means all 6 experts).
    from badit import BaditConfig

    built = build_peft_config(RunConfig().method)
    default = BaditConfig(task_type="CAUSAL_LM")
    for name in ("r", "num_experts", "top_k", "lora_alpha", "lora_dropout", "router_scale", "svd_method"):
        assert getattr(built, name) == getattr(default, name), name
    assert (built.regroup_every, built.regroup_until, built.regroup_ema) == ("epoch", 0.5, None)
    assert set(built.target_modules) == set(default.target_modules) == {"gate_proj"}


@pytest.mark.parametrize("path", sorted((CONFIGS / "paper").glob("*.yaml")), ids=lambda p: p.name)
def test_paper_scale_configs(path):
    config = load_config(path)
    tasks = config.data.tasks if config.setting == "multitask" else config.data.task_order
    assert len(tasks) == len(set(tasks)) == 15
    assert (
        tasks[1] == "task363_sst2_polarity_classification" and tasks[-1] == "task875_emotion_classification"
    )
    assert (config.training.num_train_epochs, config.training.mixed_precision) == (10, "bf16")
    assert config.method == RunConfig().method and config.training.learning_rate == 2e-4


def test_top_k_follows_num_experts_unless_set(tmp_path):
    """method.num_experts=8 routes over all 8 experts (dense: the initial model is the pretrained one);
    an explicit top_k is kept."""
    for path in (CONFIGS / "superni_multitask.yaml", CONFIGS / "own_tasks.yaml"):
        config = load_config(path, ["method.num_experts=8"])
        assert config.method.top_k is None and build_peft_config(config.method).top_k == 8
    sparse = load_config(CONFIGS / "superni_multitask.yaml", ["method.num_experts=8", "method.top_k=2"])
    assert build_peft_config(sparse.method).top_k == 2
