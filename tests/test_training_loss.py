"""The loss with the LM head on the labelled positions only equals the full-logits loss (values and
gradients), for a plain model, LoRA and BADIT (whose routers must still pool the prompt)."""

from __future__ import annotations

import math

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import TrainingArguments

import badit
from badit.training.loss import causal_lm_loss, labelled_positions, lm_head_on, shifted_labels
from badit.training.trainer import BaditTrainer
from tests.helpers import make_tiny_model


def _batch(seed: int = 0):
    """3 right-padded sequences of lengths 9, 6, 4; prompt 5, 3, 2 tokens (-100), the rest labelled."""
    g = torch.Generator().manual_seed(seed)
    lengths, prompts = [9, 6, 4], [5, 3, 2]
    ids = torch.randint(4, 128, (3, 9), generator=g)
    mask = torch.zeros(3, 9, dtype=torch.long)
    labels = torch.full((3, 9), -100)
    for i, (n, p) in enumerate(zip(lengths, prompts)):
        mask[i, :n] = 1
        labels[i, p:n] = ids[i, p:n]
        ids[i, n:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def test_labelled_positions_are_the_ones_before_each_label():
    labels = torch.tensor([[-100, -100, 7, 8, -100], [-100, 5, -100, -100, -100]])
    # position t predicts labels[t + 1]: row 0 -> t = 1, 2; row 1 -> t = 0
    assert shifted_labels(labels).tolist() == [[-100, 7, 8, -100, -100], [5, -100, -100, -100, -100]]
    assert labelled_positions(labels).tolist() == [[False, True, True, False, False], [True] + [False] * 4]


def test_uniform_logits_give_log_vocab():
    # 3 targets, zero logits over a vocabulary of 4: each target costs ln 4 = 1.3863; mean ln 4,
    # sum / 6 (a larger accumulated batch) = 3 ln 4 / 6 = 0.6931
    labels = torch.tensor([[-100, -100, 1, 2], [-100, 3, -100, -100]])
    logits = torch.zeros(3, 4, requires_grad=True)
    assert causal_lm_loss(logits, labels).item() == pytest.approx(math.log(4), abs=1e-6)
    assert causal_lm_loss(logits, labels, num_items_in_batch=6).item() == pytest.approx(
        math.log(4) / 2, abs=1e-6
    )
    with pytest.raises(ValueError, match="2 logit rows for 3 labelled positions"):
        causal_lm_loss(torch.zeros(2, 4), labels)


@pytest.mark.parametrize("adapter", ["none", "lora", "badit"])
def test_gathered_loss_and_gradients_equal_the_full_logits(adapter):
    model = make_tiny_model("llama").train()
    if adapter == "lora":
        model = get_peft_model(model, LoraConfig(r=4, target_modules=["gate_proj"], lora_dropout=0.0))
    elif adapter == "badit":
        config = badit.BaditConfig(r=2, num_experts=3, top_k=3, lora_dropout=0.0, regroup=False)
        model = get_peft_model(model, config)
        for name, p in model.named_parameters():  # a non-zero router and B, so routing changes the loss
            if "badit_router" in name or "badit_B" in name:
                torch.nn.init.normal_(p, std=0.5, generator=torch.Generator().manual_seed(1))
    params = [p for p in model.parameters() if p.requires_grad]
    batch = _batch()
    full = model(**batch).loss  # transformers' own loss over (3, 9, 128) logits
    full_grads = torch.autograd.grad(full, params)

    labels = batch["labels"]
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if adapter == "badit":
        inputs["prompt_mask"] = labels == -100
    rows = []
    head = model.get_output_embeddings()
    hook = head.register_forward_hook(lambda m, a, out: rows.append(out.shape))
    with lm_head_on(model, labelled_positions(labels)):
        logits = model(**inputs).logits
    hook.remove()
    # 4 + 3 + 2 labelled tokens -> 9 rows instead of 3 * 9 = 27
    assert rows == [torch.Size([9, 128])] and logits.shape == (9, 128)
    gathered = causal_lm_loss(logits, labels)
    torch.testing.assert_close(gathered, full, rtol=1e-6, atol=1e-6)
    for a, b in zip(torch.autograd.grad(gathered, params), full_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["lora", "badit"])
def test_trainer_loss_equals_the_full_logits_loss(tmp_path, method):
    model = make_tiny_model("llama").train()
    if method == "lora":
        model = get_peft_model(model, LoraConfig(r=4, target_modules=["gate_proj"], lora_dropout=0.0))
    else:
        model = get_peft_model(model, badit.BaditConfig(r=2, num_experts=3, lora_dropout=0.0, regroup=False))
        for name, p in model.named_parameters():
            if "badit_router" in name or "badit_B" in name:
                torch.nn.init.normal_(p, std=0.5, generator=torch.Generator().manual_seed(1))
    args = TrainingArguments(str(tmp_path), use_cpu=True, report_to="none")
    batch = {**_batch(), "task_ids": torch.tensor([0, 1, 0])}
    losses = {}
    for only in (True, False):
        trainer = BaditTrainer(model=model, args=args, train_dataset=[{}], labelled_logits_only=only)
        # 9 labelled tokens here of 12 in the accumulated batch: sum / 12
        losses[only] = trainer.compute_loss(model, dict(batch), num_items_in_batch=torch.tensor(12))
    torch.testing.assert_close(losses[True], losses[False], rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        reference = model(**_batch()).loss * 9 / 12  # the model's mean over 9 tokens, as a sum / 12
    torch.testing.assert_close(losses[True], reference, rtol=1e-6, atol=1e-6)


def test_padded_tokens_are_counted_logged_and_checkpointed(tmp_path):
    from badit.training.trainer import PADDED_TOKENS_FILE, StagePaths, padded_tokens_at, train_stage
    from tests.helpers import char_tokenizer

    model = get_peft_model(
        make_tiny_model("llama"), LoraConfig(r=2, target_modules=["gate_proj"], lora_dropout=0.0)
    )
    # two examples of 3 and 5 tokens in one batch of 2: 2 x 5 = 10 positions for 8 real tokens
    examples = [
        {"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "task_id": 0},
        {"input_ids": [5, 6, 7, 8, 9], "labels": [-100, -100, 7, 8, 9], "task_id": 1},
    ]
    args = TrainingArguments(
        str(tmp_path / "checkpoints"),
        use_cpu=True,
        report_to="none",
        max_steps=2,
        per_device_train_batch_size=2,
        logging_steps=1,
        save_steps=1,
        include_num_input_tokens_seen="non_padding",
    )
    logs = tmp_path / "logs"
    paths = StagePaths(
        tmp_path,
        tmp_path / "adapter",
        logs / "train.jsonl",
        logs / "regroup.jsonl",
        logs / "router.jsonl",
        logs,
    )
    result = train_stage(model, char_tokenizer(), examples, paths, args, tensorboard=False)
    steps = [r for r in result.log_history if "loss" in r]
    assert [(r["num_input_tokens_seen"], r["padded_tokens"]) for r in steps] == [(8, 10), (16, 20)]
    assert steps[-1]["padding_fraction"] == pytest.approx(0.2)  # 1 - 16 / 20
    assert padded_tokens_at(tmp_path / "checkpoints" / "checkpoint-2") == 20
    assert (tmp_path / "checkpoints" / "checkpoint-1" / PADDED_TOKENS_FILE).is_file()
    assert padded_tokens_at(None) == 0
