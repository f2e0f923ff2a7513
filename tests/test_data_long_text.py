"""Huge fields are cut by characters before the tokenizer sees them, without changing a kept token."""

from __future__ import annotations

import pytest

from badit.data import Instance, PromptTemplate, Task, encode_prompts, tokenize_tasks
from badit.data.tokenize import CHARS_PER_TOKEN, cut_long_fields, keep_end
from tests.helpers import char_tokenizer


class CountingTokenizer:
    """The character tokenizer, recording the longest text it was asked to encode."""

    def __init__(self):
        self.inner = char_tokenizer()
        self.longest = 0
        self.eos_token_id = self.inner.eos_token_id
        self.chat_template = None

    def __call__(self, texts, **kwargs):
        for text in [texts] if isinstance(texts, str) else texts:
            self.longest = max(self.longest, len(text))
        return self.inner(texts, **kwargs)


def _task(definition: str, inputs: list[str], outputs: list[str], example: str = "ex") -> Task:
    return Task(
        name="t",
        definition=definition,
        positive_examples=[Instance("p", example, [example])],
        instances=[Instance(f"i{n}", x, [y]) for n, (x, y) in enumerate(zip(inputs, outputs))],
    )


def test_keep_end():
    assert keep_end("abcdef", 4) == "cdef"
    assert keep_end("abc", 4) == "abc"


def test_a_huge_definition_is_cut_before_the_tokenizer_sees_it():
    # max_source_length 20 -> 20 * 16 = 320 characters per field; the definition has 2_000_000.
    definition = "word " * 400_000
    task = _task(definition, ["short input", "x"], ["yes", "no"])
    tokenizer = CountingTokenizer()
    examples = tokenize_tasks(tokenizer, [task], max_source_length=20, max_target_length=4)
    # the longest text is the prefix: the cut definition (320 chars) + "\n\n" (2)
    # + "Now complete the following example -" (36) + "\nInput: " (8) = 366
    assert tokenizer.longest == 366
    # prompt 20 tokens; answers " yes" cut to 3 + EOS, " no" 3 + EOS (the prompt's trailing space moves over)
    assert [len(e["input_ids"]) for e in examples] == [20 + 4, 20 + 4]
    assert task.definition is definition  # the caller's task is not changed


@pytest.mark.parametrize("field", ["definition", "input", "example"])
def test_cutting_changes_no_kept_token(field, monkeypatch):
    # One character is one token here, so every field longer than 16 * 30 = 480 characters is cut, and the
    # prompt (30 tokens) lies inside the kept end: the ids must be those of the uncut text.
    long = "".join(chr(ord("a") + i % 26) for i in range(5000))
    fields = {"definition": "def", "input": "in", "example": "ex", field: long}
    tasks = [_task(fields["definition"], [fields["input"], "b"], [long, "c"], example=fields["example"])]
    template = PromptTemplate(num_pos_examples=1)
    tokenizer = CountingTokenizer()
    cut_prompts = encode_prompts(tokenizer, tasks, template, max_source_length=30)
    cut_examples = tokenize_tasks(tokenizer, tasks, template, max_source_length=30, max_target_length=8)
    assert tokenizer.longest < 5000
    monkeypatch.setattr("badit.data.tokenize.cut_long_fields", lambda tasks, *a: list(tasks))
    assert encode_prompts(tokenizer, tasks, template, max_source_length=30) == cut_prompts
    assert (
        tokenize_tasks(tokenizer, tasks, template, max_source_length=30, max_target_length=8) == cut_examples
    )
    assert tokenizer.longest > 5000  # the uncut run did see the whole field


def test_answers_keep_their_start_and_references_are_not_cut():
    answer = "b" * 1000
    task = _task("d", ["x"], [answer])
    (cut,) = cut_long_fields([task], max_source_length=10, max_target_length=2)
    assert cut.instances[0].outputs == ["b" * (2 * CHARS_PER_TOKEN)]
    (prompt_only,) = cut_long_fields([task], max_source_length=10)  # evaluation: references stay whole
    assert prompt_only is task


def test_chat_messages_are_cut():
    message = "z" * 10_000
    task = Task("t", "", [], [Instance("i", message, ["a"], messages=[{"role": "user", "content": message}])])
    (cut,) = cut_long_fields([task], max_source_length=10)
    assert cut.instances[0].messages == [{"role": "user", "content": "z" * 160}]
    assert cut.instances[0].input == "z" * 160
