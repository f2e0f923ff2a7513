"""BADIT outside badit's own Trainer: the plain PyTorch loop of docs/usage.md and TRL's SFTTrainer,
each for a few steps on a tiny model with own JSONL data; the router and the regroup both act."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from peft import get_peft_model

import badit
from tests.helpers import doc_block, save_tiny_model, substitute, write_mix

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    # TRL's SFTConfig sets a TrainingArguments field that transformers 5 renamed; not ours to fix
    pytest.mark.filterwarnings("ignore:`gradient_checkpointing` is deprecated:FutureWarning"),
]


def badit_config(**overrides) -> badit.BaditConfig:
    kwargs = dict(r=2, num_experts=3, top_k=3, lora_alpha=8, lora_dropout=0.0, target_modules=["gate_proj"])
    return badit.BaditConfig(**{**kwargs, **overrides})


def router_weights(model) -> list[torch.Tensor]:
    return [p.detach().clone() for n, p in model.named_parameters() if "badit_router" in n]


def docs_block_on_tiny_model(tmp_path, monkeypatch, heading: str, replacements: dict[str, str]) -> str:
    """docs/usage.md's block under ``heading`` with the model swapped for a tiny one saved in tmp_path,
    run from tmp_path beside the own-data mix (write_mix), and ``replacements`` made."""
    monkeypatch.chdir(tmp_path)
    write_mix(tmp_path / "mix.jsonl")
    save_tiny_model(tmp_path / "tiny")
    model = {'"smollm2-135m-instruct"': repr(str(tmp_path / "tiny"))}
    return substitute(doc_block("docs/usage.md", heading), {**model, **replacements})


@pytest.mark.slow
def test_plain_pytorch_loop_docs_block_trains_router_and_regroups(tmp_path, monkeypatch):
    """docs/usage.md's plain PyTorch loop as written (model, sizes and schedule made tiny)."""
    torch.manual_seed(0)
    code = docs_block_on_tiny_model(
        tmp_path,
        monkeypatch,
        "### A plain PyTorch loop",
        {
            "num_epochs = 3": "num_epochs = 1",
            "max_source_length=974, max_target_length=50": "max_source_length=64, max_target_length=8",
            "regroup_every=10,": "regroup_every=2, regroup_until=1.0, lora_dropout=0.0,",
            "lr=2e-4": "lr=1e-2",
        },
    )
    # record each regroup's statistics and the routers before training, around the docs' own calls
    regroups, routers_before = [], []
    regroup = badit.regroup

    def recording_regroup(model, optimizer):
        regroups.append(regroup(model, optimizer))
        return regroups[-1]

    def recording_get_peft_model(*args, **kwargs):
        model = get_peft_model(*args, **kwargs)
        routers_before.extend(router_weights(model))
        return model

    monkeypatch.setattr(badit, "regroup", recording_regroup)
    namespace = {"__name__": "docs_block"}
    code = code.replace("from peft import get_peft_model\n", "")
    namespace["get_peft_model"] = recording_get_peft_model
    exec(compile(code, "docs/usage.md (A plain PyTorch loop)", "exec"), namespace)
    model, step = namespace["model"], namespace["step"]
    # --- checks ---
    # 22 training rows (24 minus 10% test: 1 per task) / batch 8 = 3 steps; regroup after step 2 only
    # (never after the last step)
    assert (step, len(regroups)) == (3, 1)
    layers = set(badit.get_routing_weights(model))
    assert set(regroups[0]) == layers and len(layers) == 2  # gate_proj of both decoder layers
    assert sum(s["moved"] for s in regroups[0].values()) > 0  # components changed experts
    assert all(not torch.equal(a, b) for a, b in zip(routers_before, router_weights(model)))
    weights = next(iter(badit.get_routing_weights(model).values()))
    assert weights.shape[1] == 6 and not torch.allclose(weights[0], weights[1])  # per-sequence routing
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()


@pytest.mark.slow
def test_trl_sft_trainer_docs_block_with_regroup_callback(tmp_path, monkeypatch):
    """The docs' TRL block as written (model, sizes and schedule made tiny), on the README's data shape:
    a task whose completions are lists of acceptable answers."""
    pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    code = docs_block_on_tiny_model(
        tmp_path,
        monkeypatch,
        "### TRL's SFTTrainer",
        {
            'task_type="CAUSAL_LM"': 'task_type="CAUSAL_LM", lora_dropout=0.0, regroup_every=2, regroup_until=1.0',
            "learning_rate=2e-4,": 'learning_rate=1e-2, max_steps=4, per_device_train_batch_size=8, report_to="none",',
        },
    )
    with open(tmp_path / "mix.jsonl", "a", encoding="utf-8") as f:  # as the README's add_one task
        f.writelines(
            json.dumps({"task": "add_one", "prompt": f"{n} plus one:", "completion": [str(n + 1), f"n{n}"]})
            + "\n"
            for n in range(12)
        )
    # the tiny model's tokenizer gets a chat template (in its 79 characters), as an instruct model has
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "tiny")
    tokenizer.chat_template = "{% for m in messages %}User: {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}Answer: {% endif %}"
    tokenizer.save_pretrained(tmp_path / "tiny")
    namespace: dict = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exec(compile(code, "docs/usage.md (TRL's SFTTrainer)", "exec"), namespace)
    # --- checks ---
    assert not [
        w for w in caught if "ismatch" in str(w.message)
    ]  # TRL's prompt / completion boundary warning
    # 3 tasks x 12 rows, 1 test row each held out: 33 training rows, the add_one ones with their first answer,
    # each prompt the chat template's user turn and the assistant's start (what `badit train` evaluates)
    assert len(namespace["train"]) == 33
    add_one = [row for row in namespace["train"] if "plus one:" in row["prompt"]]
    assert len(add_one) == 11 and all(
        row["prompt"] == f"User: {int(row['completion']) - 1} plus one:\nAnswer: " for row in add_one
    )
    regroup = next(
        c for c in namespace["trainer"].callback_handler.callbacks if isinstance(c, badit.RegroupCallback)
    )
    assert [record["step"] for record in regroup.history] == [2]  # every 2 steps, not after the last
    moved = sum(layer["moved"] for layer in regroup.history[0]["layers"].values())
    assert moved > 0
    # the summary joined the Trainer's log record of step 2 (logging_steps 10: the next record is
    # the end-of-training one, at step 4)
    logged = [r for r in namespace["trainer"].state.log_history if "regroup/moved" in r]
    assert [(r["step"], r["regroup/moved"]) for r in logged] == [(4, float(moved))]
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
