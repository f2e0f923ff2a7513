"""BADIT outside badit's own Trainer: the plain PyTorch loop of docs/usage.md and TRL's SFTTrainer,
each for a few steps on a tiny model with own JSONL data; the router and the regroup both act."""

from __future__ import annotations

import json

import pytest
import torch
from peft import get_peft_model

import badit
from badit.data import DataCollator, open_source, tokenize_tasks
from badit.regrouping import regroup_due
from tests.helpers import char_tokenizer, make_tiny_model

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    # TRL's SFTConfig sets a TrainingArguments field that transformers 5 renamed; not ours to fix
    pytest.mark.filterwarnings("ignore:`gradient_checkpointing` is deprecated:FutureWarning"),
]


def write_mix(path) -> None:
    """Two tasks on the same inputs (copy / reverse a word), 12 rows each."""
    words = ["ab", "cd", "ef", "gh", "ij", "kl", "mn", "op", "qr", "st", "uv", "wx"]
    rows = [{"task": "copy", "prompt": f"copy {w}:", "completion": w} for w in words]
    rows += [{"task": "reverse", "prompt": f"reverse {w}:", "completion": w[::-1]} for w in words]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def badit_config(**overrides) -> badit.BaditConfig:
    kwargs = dict(r=2, num_experts=3, top_k=3, lora_alpha=8, lora_dropout=0.0, target_modules=["gate_proj"])
    return badit.BaditConfig(**{**kwargs, **overrides})


def router_weights(model) -> list[torch.Tensor]:
    return [p.detach().clone() for n, p in model.named_parameters() if "badit_router" in n]


@pytest.mark.slow
def test_plain_pytorch_loop_trains_router_and_regroups(tmp_path):
    torch.manual_seed(0)
    write_mix(tmp_path / "mix.jsonl")
    tokenizer = char_tokenizer()
    # --- as in docs/usage.md, "A plain PyTorch loop" (sizes made tiny) ---
    tasks = open_source(tmp_path / "mix.jsonl").load("train")
    examples = tokenize_tasks(tokenizer, tasks, max_source_length=64, max_target_length=8)
    config = badit_config(regroup_every=2, regroup_until=1.0)
    model = get_peft_model(make_tiny_model("llama"), config)  # also installs the regroup gradient hooks
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loader = torch.utils.data.DataLoader(
        examples, batch_size=8, shuffle=True, collate_fn=DataCollator(tokenizer.pad_token_id)
    )
    routers_before = router_weights(model)
    num_epochs, step, regroups = 1, 0, []
    total_steps = num_epochs * len(loader)
    model.train()
    for _ in range(num_epochs):
        for batch in loader:
            batch.pop("task_ids")
            # labels are -100 on the prompt: the routers pool the prompt tokens (or pass prompt_mask=)
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            if regroup_due(config, step=step, total_steps=total_steps, epoch_end=False):
                regroups.append(badit.regroup(model, optimizer))  # moves components with their Adam state
        if regroup_due(config, step=step, total_steps=total_steps, epoch_end=True):
            regroups.append(badit.regroup(model, optimizer))
    # --- checks ---
    # 22 training rows (24 minus 10% test: 1 per task) / batch 8 = 3 steps; regroup after step 2 only
    # (never after the last step)
    assert (step, len(regroups)) == (3, 1)
    layers = set(badit.get_routing_weights(model))
    assert set(regroups[0]) == layers and len(layers) == 2  # gate_proj of both decoder layers
    assert sum(s["moved"] for s in regroups[0].values()) > 0  # components changed experts
    assert all(not torch.equal(a, b) for a, b in zip(routers_before, router_weights(model)))
    weights = next(iter(badit.get_routing_weights(model).values()))
    assert weights.shape[1] == 3 and not torch.allclose(weights[0], weights[1])  # per-sequence routing


@pytest.mark.slow
def test_trl_sft_trainer_with_regroup_callback(tmp_path, monkeypatch):
    trl = pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    write_mix(tmp_path / "mix.jsonl")
    tokenizer = char_tokenizer()
    # --- as in docs/usage.md, "TRL's SFTTrainer" ---
    train = datasets.load_dataset("json", data_files=str(tmp_path / "mix.jsonl"), split="train")
    model = get_peft_model(make_tiny_model("llama"), badit_config(regroup_every=2, regroup_until=1.0))
    regroup = badit.RegroupCallback(config=model.peft_config["default"])
    routers_before = router_weights(model)
    trainer = trl.SFTTrainer(
        model=model,
        args=trl.SFTConfig(
            output_dir=str(tmp_path / "out"),
            max_steps=4,
            per_device_train_batch_size=8,
            learning_rate=1e-2,
            completion_only_loss=True,  # the loss on the completion only, as badit's own training
            report_to="none",
            save_strategy="no",
            use_cpu=True,
        ),
        train_dataset=train.remove_columns("task"),
        processing_class=tokenizer,
        callbacks=[regroup],
    )
    trainer.train()
    # --- checks ---
    assert [record["step"] for record in regroup.history] == [2]  # every 2 steps, not after the last
    assert sum(layer["moved"] for layer in regroup.history[0]["layers"].values()) > 0
    assert all(not torch.equal(a, b) for a, b in zip(routers_before, router_weights(model)))
