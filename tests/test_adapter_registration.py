"""BADIT's registration with PEFT: fails loudly if a PEFT upgrade changes what registration relies on."""

import inspect
from importlib.metadata import requires, version

from packaging.specifiers import SpecifierSet
from peft import LoraConfig, PeftConfig, get_peft_model
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
from peft.utils.peft_types import PeftType, register_peft_method

import badit
from badit.adapter.registration import register
from tests.helpers import make_tiny_model


def test_installed_peft_is_in_the_pinned_range():
    # The installed badit's metadata carries pyproject.toml's dependency list.
    peft_spec = next(d for d in requires("badit") if d.replace(" ", "").startswith("peft"))
    assert version("peft") in SpecifierSet(peft_spec.replace(" ", "").removeprefix("peft"))


def test_peft_register_method_keeps_the_signature_we_call():
    parameters = inspect.signature(register_peft_method).parameters
    assert {"name", "config_cls", "model_cls", "prefix"} <= set(parameters)


def test_badit_is_a_member_of_peft_type_and_registered():
    assert PeftType.BADIT == "BADIT"
    assert PeftType("BADIT") is PeftType.BADIT
    assert PeftType["BADIT"] is PeftType.BADIT
    assert "BADIT" in list(PeftType)
    assert PEFT_TYPE_TO_CONFIG_MAPPING[PeftType.BADIT] is badit.BaditConfig
    assert PEFT_TYPE_TO_TUNER_MAPPING[PeftType.BADIT] is badit.BaditModel
    assert PEFT_TYPE_TO_PREFIX_MAPPING[PeftType.BADIT] == "badit_"
    assert badit.BaditConfig().peft_type is PeftType.BADIT
    register()  # idempotent
    assert PEFT_TYPE_TO_TUNER_MAPPING[PeftType.BADIT] is badit.BaditModel


def test_config_round_trips_through_peft(tmp_path):
    config = badit.BaditConfig(r=2, num_experts=3, top_k=2, router_scale="paper", target_modules="all-linear")
    config.save_pretrained(tmp_path)
    loaded = PeftConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, badit.BaditConfig)
    assert (loaded.r, loaded.num_experts, loaded.top_k, loaded.router_scale) == (2, 3, 2, "paper")
    assert loaded.peft_type is PeftType.BADIT


def test_get_peft_model_builds_a_badit_tuner():
    config = badit.BaditConfig(regroup=False, task_type="CAUSAL_LM")
    model = get_peft_model(make_tiny_model("llama"), config)
    assert isinstance(model.base_model, badit.BaditModel)
    assert type(model).__name__ == "PeftModelForCausalLM"


def test_task_type_defaults_to_none_like_lora():
    assert badit.BaditConfig().task_type is None
    assert badit.BaditConfig().task_type == LoraConfig().task_type
