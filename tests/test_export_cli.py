"""`badit export` of an adapter folder: --base, no tokenizer for --format lora, --dtype for merged, the
public hub id recorded for badit's converted embedded model, and the model card of the export."""

from __future__ import annotations

import json

import pytest
import torch
from peft import get_peft_model
from safetensors import safe_open

from badit.cli.main import main
from tests.conftest import make_tiny_model
from tests.helpers import char_tokenizer
from tests.test_adapter_multi import config


@pytest.fixture
def adapter_without_base(tmp_path):
    """A BADIT adapter folder whose adapter_config.json records no base model, and a base folder
    without a tokenizer, named as badit names its converted embedded model."""
    base_dir = tmp_path / "SmolLM2-135M-Instruct-from-Q4_1"
    make_tiny_model("llama").save_pretrained(base_dir)  # float32 weights, no tokenizer files
    model = get_peft_model(make_tiny_model("llama"), config())
    model.save_pretrained(tmp_path / "adapter")
    path = tmp_path / "adapter" / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "base_model_name_or_path": None}))
    return tmp_path / "adapter", base_dir


def test_export_names_the_base_with_base_and_needs_no_tokenizer_for_lora(
    adapter_without_base, tmp_path, capsys
):
    adapter, base_dir = adapter_without_base
    assert main(["export", str(adapter), "--output", str(tmp_path / "x")]) == 2
    assert "name the base model with --base MODEL" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()

    assert main(["export", str(adapter), "--base", str(base_dir), "--output", str(tmp_path / "lora")]) == 0
    saved = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    # badit's converted embedded model is recorded by its public hub id, so the export travels
    assert saved["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    card = (tmp_path / "lora" / "README.md").read_text()
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card
    assert "Not measured: exported from an adapter folder" in card
    assert not (tmp_path / "lora" / "tokenizer.json").exists()


def test_merged_export_dtype_defaults_to_the_base_and_copies_a_tokenizer(adapter_without_base, tmp_path):
    adapter, base_dir = adapter_without_base
    args = ["export", str(adapter), "--base", str(base_dir), "--format", "merged"]
    assert main([*args, "--output", str(tmp_path / "f32")]) == 0  # the base's config records float32
    assert main([*args, "--dtype", "bfloat16", "--output", str(tmp_path / "bf16")]) == 0
    for name, dtype in (("f32", torch.float32), ("bf16", torch.bfloat16)):
        with safe_open(str(tmp_path / name / "model.safetensors"), framework="pt") as f:
            assert {f.get_tensor(key).dtype for key in f.keys()} == {dtype}
    assert not (tmp_path / "f32" / "tokenizer.json").exists()  # the base has none: none copied
    # a base saved in bfloat16 with a tokenizer: the merged model is bfloat16 and gets the tokenizer
    half = tmp_path / "half-base"
    make_tiny_model("llama").to(torch.bfloat16).save_pretrained(half)
    char_tokenizer().save_pretrained(half)
    args = [
        "export",
        str(adapter),
        "--base",
        str(half),
        "--format",
        "merged",
        "--output",
        str(tmp_path / "m"),
    ]
    assert main(args) == 0
    assert json.loads((tmp_path / "m" / "config.json").read_text())["dtype"] == "bfloat16"
    assert (tmp_path / "m" / "tokenizer.json").is_file()
    assert (
        main(
            [
                "export",
                str(adapter),
                "--base",
                str(half),
                "--dtype",
                "float16",
                "--output",
                str(tmp_path / "y"),
            ]
        )
        == 2
    )
