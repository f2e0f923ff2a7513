"""Huge text fields are cut by characters before anything else processes them.

A prompt keeps at most ``max_source_length`` tokens, taken from the END of its text (the input, and only
when the input is gone the prefix, are cut from the left: ``badit.data.tokenize``), and an answer keeps
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
from collections.abc import Sequence

from badit.data.tasks import Instance, Task

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
