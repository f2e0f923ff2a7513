"""Tokenisation for causal-LM instruction tuning: loss on the answer only.

An example is `prompt_ids + answer_ids + [eos]` with labels -100 on the prompt. The prompt is
tokenised in three pieces (prefix, input, suffix; see `PromptParts`) so that only the instance
input is truncated, from the left, to fit `max_source_length`; the answer (+ EOS) is cut to
`max_target_length` from the right. Evaluation encodes prompts with the same function
(`encode_prompts`), so the model sees identical prompt tokens in training and evaluation.

Spaces at the very end of the prompt (the paper's "Output: ") are moved to the start of the answer:
BPE tokenizers (Llama-3, Qwen, SmolLM, Gemma, ...) write a word with its leading space as one token,
so "Output:" + " answer" tokenises like the running text, whereas a lone trailing-space token is
something pretrained models rarely see and often answer with a newline (this matters for the base
model's zero-shot scores, e.g. FWT's b_j). The text of prompt + answer is unchanged.

Long fields. Huge text fields are cut by characters before anything else processes them.

A prompt keeps at most ``max_source_length`` tokens, taken from the END of its text (the input, and only
when the input is gone the prefix, are cut from the left: `encode_prompt_parts`), and an answer keeps
its first ``max_target_length`` tokens. So of a field longer than that, only its end (prompt fields) or
its start (answers) can reach the model. Cutting the field by characters to that end or start, before
the prompt is formatted and tokenised, changes no token that is kept and makes a 10 MB ``Definition``
cost what a normal one does (issue 13: a 10 MB field made a 12 s run take 172 s, because the whole
field was formatted and tokenised once per instance).

The bound is ``CHARS_PER_TOKEN`` characters per token of the budget. Tokenizers of the supported
families (BPE of Llama-3, Qwen, SmolLM, Gemma; SentencePiece) average 3-5 characters per token on
English and fewer on code and other scripts (a byte-level token never covers less than one byte, so
one character is at least one token-piece); 16 leaves a 3-4x margin. Only text that averages more than
16 characters per token over its kept part (e.g. a run of thousands of repeated characters that merges
into long tokens) can end up with a prompt a little shorter than ``max_source_length``; it is never
longer and its tokens are never different ones.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence

from badit.data.files import DataError
from badit.data.prompts import PromptParts, PromptTemplate
from badit.data.tasks import Instance, Task

IGNORE_INDEX = -100
CHARS_PER_TOKEN = 16


def text_bound(max_tokens: int) -> int:
    """The characters of a field that can reach a budget of ``max_tokens`` tokens."""
    return CHARS_PER_TOKEN * max_tokens


def keep_end(text: str, max_chars: int) -> str:
    """The last ``max_chars`` characters of ``text`` (all of it when shorter)."""
    return text if len(text) <= max_chars else text[len(text) - max_chars :]


def _cut_instance(instance: Instance, prompt_chars: int, answer_chars: int | None) -> Instance:
    """The instance with its prompt fields cut to their end; its answers to their start (``answer_chars``,
    None: kept whole) or, negative, to their end (positive examples: their answers are prompt text)."""
    messages = instance.messages
    if messages is not None:
        messages = [{**m, "content": keep_end(m["content"], prompt_chars)} for m in messages]
    if answer_chars is None:
        outputs = instance.outputs
    elif answer_chars < 0:
        outputs = [keep_end(o, -answer_chars) for o in instance.outputs]
    else:
        outputs = [o[:answer_chars] for o in instance.outputs]
    return dataclasses.replace(
        instance, input=keep_end(instance.input, prompt_chars), outputs=outputs, messages=messages
    )


def cut_long_fields(
    tasks: Sequence[Task], max_source_length: int, max_target_length: int | None = None
) -> list[Task]:
    """``tasks`` with every prompt field (definition, positive examples, inputs, chat messages) cut to
    its last ``text_bound(max_source_length)`` characters and, with ``max_target_length``, every answer
    to its first ``text_bound(max_target_length)`` (training only: evaluation scores the full references).
    Tasks without a long field are returned as they are (no copy)."""
    prompt_chars = text_bound(max_source_length)
    answer_chars = text_bound(max_target_length) if max_target_length is not None else None

    def long(instance: Instance, answer_chars: int | None) -> bool:
        texts = [instance.input, *(m["content"] for m in instance.messages or [])]
        return any(len(t) > prompt_chars for t in texts) or (
            answer_chars is not None and any(len(o) > answer_chars for o in instance.outputs)
        )

    out = []
    for task in tasks:
        if (
            len(task.definition) <= prompt_chars
            and not any(long(i, prompt_chars) for i in task.positive_examples)
            and not any(long(i, answer_chars) for i in task.instances)
        ):
            out.append(task)
            continue
        out.append(
            dataclasses.replace(
                task,
                definition=keep_end(task.definition, prompt_chars),
                positive_examples=[
                    _cut_instance(i, prompt_chars, -prompt_chars) for i in task.positive_examples
                ],
                instances=[_cut_instance(i, prompt_chars, answer_chars) for i in task.instances],
            )
        )
    return out


def leading_special_tokens(tokenizer) -> list[int]:
    """The ids the tokenizer puts before any text (e.g. BOS for Llama/Gemma; none for SmolLM2/Qwen)."""
    with_special = tokenizer("a")["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    return with_special[: with_special.index(plain[0])] if plain and plain[0] in with_special else []


def _batch_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    return tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []


def _fit_prompt(
    lead: list[int], prefix: list[int], inp: list[int], suffix: list[int], max_len: int
) -> list[int]:
    """lead + prefix + input + suffix in at most `max_len` tokens, cutting the input from the left
    (and, only when the input is gone, the prefix from the left)."""
    budget = max_len - len(lead) - len(prefix) - len(suffix)
    if budget >= 0:
        return lead + prefix + inp[max(len(inp) - budget, 0) :] + suffix
    keep = max_len - len(lead) - len(suffix)
    if keep < 0:
        raise DataError(
            f"max_source_length={max_len} is shorter than the fixed end of the prompt ({len(suffix)} tokens); "
            "raise data.max_source_length"
        )
    return lead + prefix[len(prefix) - keep :] + suffix


def encode_prompt_parts(tokenizer, parts: Sequence[PromptParts], max_source_length: int) -> list[list[int]]:
    """Token ids of each prompt, the input truncated from the left to fit `max_source_length`.
    Prompts rendered by a chat template (`PromptParts.chat`) already hold their special tokens."""
    lead = leading_special_tokens(tokenizer)
    prefixes = _batch_ids(tokenizer, [p.prefix for p in parts])
    inputs = _batch_ids(tokenizer, [p.input for p in parts])
    suffixes = _batch_ids(tokenizer, [p.suffix.rstrip(" ") for p in parts])
    return [
        _fit_prompt([] if p.chat else lead, a, b, c, max_source_length)
        for p, a, b, c in zip(parts, prefixes, inputs, suffixes)
    ]


def _trailing_spaces(text: str) -> str:
    return text[len(text.rstrip(" ")) :]


def _pairs(tasks: Sequence[Task]) -> list[tuple[Task, Instance]]:
    return [(task, inst) for task in tasks for inst in task.instances]


def prompt_parts(
    tokenizer, tasks: Sequence[Task], template: PromptTemplate | None = None
) -> list[PromptParts]:
    """The prompt of every instance of every task, in task then instance order."""
    template = template or PromptTemplate()
    return [template.parts(task, inst, tokenizer) for task, inst in _pairs(tasks)]


def encode_prompts(
    tokenizer, tasks: Sequence[Task], template: PromptTemplate | None = None, max_source_length: int = 1024
) -> list[list[int]]:
    """Prompt token ids (trailing spaces dropped, see module doc) of every instance of every task."""
    tasks = cut_long_fields(tasks, max_source_length)  # a huge field costs no more than a normal one
    return encode_prompt_parts(tokenizer, prompt_parts(tokenizer, tasks, template), max_source_length)


def tokenize_tasks(
    tokenizer,
    tasks: Sequence[Task],
    template: PromptTemplate | None = None,
    *,
    max_source_length: int = 1024,
    max_target_length: int = 128,
    seed: int = 0,
    task_ids: dict[str, int] | None = None,
) -> list[dict]:
    """Training examples {input_ids, labels, task_id} for every instance of every task.

    Where an instance has several acceptable outputs, one is chosen with `random.Random(seed)`.
    `task_ids` maps task name -> integer id (default: position in `tasks`).
    """
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos_token_id; set tokenizer.eos_token before tokenising")
    if max_target_length < 1:
        raise ValueError(f"max_target_length must be >= 1 (room for EOS), got {max_target_length}")
    task_ids = task_ids if task_ids is not None else {t.name: i for i, t in enumerate(tasks)}
    missing = [t.name for t in tasks if t.name not in task_ids]
    if missing:
        raise ValueError(f"task_ids has no id for tasks {missing}")
    rng = random.Random(seed)
    tasks = cut_long_fields(tasks, max_source_length, max_target_length)  # see the module doc (long fields)
    pairs = _pairs(tasks)
    parts = prompt_parts(tokenizer, tasks, template)
    prompts = encode_prompt_parts(tokenizer, parts, max_source_length)
    answer_texts = [
        _trailing_spaces(p.suffix) + rng.choice(inst.outputs) for p, (_, inst) in zip(parts, pairs)
    ]
    answers = _batch_ids(tokenizer, answer_texts)
    examples = []
    for (task, _), prompt, answer in zip(pairs, prompts, answers):
        answer = answer[: max_target_length - 1] + [tokenizer.eos_token_id]
        examples.append(
            {
                "input_ids": prompt + answer,
                "labels": [IGNORE_INDEX] * len(prompt) + answer,
                "task_id": task_ids[task.name],
            }
        )
    return examples
