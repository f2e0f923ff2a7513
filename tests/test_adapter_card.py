"""The model card save_pretrained writes: BADIT, import badit + version, the base model's public name, K, r."""

from peft import get_peft_model

import badit
from badit.adapter.card import BEGIN, write_model_card
from tests.conftest import make_tiny_model
from tests.test_adapter_multi import config

CACHE_PATH = "/home/someone/.cache/badit/models/SmolLM2-135M-Instruct-from-Q4_1"


def embedded_like_model():
    """A tiny model that says it was loaded from badit's converted copy of the embedded default."""
    model = make_tiny_model("llama")
    model.name_or_path = CACHE_PATH
    model.config._name_or_path = CACHE_PATH
    return model


def test_saved_card_tells_a_stranger_what_to_do(tmp_path):
    model = get_peft_model(
        embedded_like_model(), config(r=2, num_experts=3, target_modules=["gate_proj", "up_proj"])
    )
    model.save_pretrained(tmp_path)
    model.save_pretrained(tmp_path)  # a second save replaces the section, never duplicates it
    card = (tmp_path / "README.md").read_text()
    assert card.count(BEGIN) == 1
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card
    assert ".cache" not in card  # neither in the metadata nor in PEFT's tags
    assert "import badit" in card and f"badit {badit.__version__}" in card
    assert "KeyError: 'BADIT'" in card
    assert "K = 3 LoRA experts of rank r = 2" in card
    assert "- target modules: `gate_proj`, `up_proj`" in card


def test_tasks_and_scores_when_the_run_knows_them(tmp_path):
    model = get_peft_model(make_tiny_model("llama"), config())
    model.save_pretrained(tmp_path)
    write_model_card(tmp_path, model.peft_config["default"], tasks={"task_b": 41.5, "task_a": None})
    card = (tmp_path / "README.md").read_text()
    assert "| task_a |  |\n| task_b | 41.50 |" in card
    assert card.count(BEGIN) == 1


def test_the_embedded_default_has_a_public_name():
    from badit.adapter.card import PUBLIC_NAMES
    from badit.training import model_loading

    assert PUBLIC_NAMES[model_loading._EMBEDDED_CACHE_NAME] == "HuggingFaceTB/SmolLM2-135M-Instruct"
