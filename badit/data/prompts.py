"""Prompt templates. The default reproduces the BADIT paper's SuperNI prompt:

    "{definition}\\n\\nNow complete the following example -\\nInput: {input}\\nOutput: "

`definition` is the task's first `Definition` entry, stripped (as Tk-Instruct's `DataCollatorForNI`
does; every SuperNI task has exactly one). Unlike Tk-Instruct we add no "Definition: " prefix and no
final period after the input, following the paper's template. With `num_pos_examples = k > 0` the first
k positive examples are inserted at `{examples}`, each rendered with `example_template`.

Own-data tasks bring their prompts as written (`Task.template` = "{input}"); chat rows (an instance
with `messages`) are rendered with the tokenizer's chat template, their last message being the input.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

from badit.data.files import DataError
from badit.data.tasks import Instance, Task

PAPER_TEMPLATE = "{definition}\n\n{examples}Now complete the following example -\nInput: {input}\nOutput: "
EXAMPLE_TEMPLATE = "Positive Example {index} -\nInput: {input}\nOutput: {output}\n\n"
_FIELDS = {"definition", "examples", "input", "task"}
_SENTINEL = "\x00BADIT_INPUT\x00"  # stands for the input while a chat template is rendered


@dataclass(frozen=True)
class PromptParts:
    """A prompt split around the instance input, so the input alone can be truncated."""

    prefix: str
    input: str
    suffix: str
    chat: bool = False  # rendered by a chat template, which already holds its special tokens (BOS...)

    @property
    def text(self) -> str:
        return self.prefix + self.input + self.suffix


@dataclass(frozen=True)
class PromptTemplate:
    """How an instance becomes a prompt. Fields usable in `template`: {definition}, {examples},
    {input} (exactly once), {task} (the task name). With `use_chat_template` the rendered prompt is the
    user turn of the tokenizer's chat template, followed by the generation prompt."""

    template: str = PAPER_TEMPLATE
    example_template: str = EXAMPLE_TEMPLATE
    num_pos_examples: int = 0
    use_chat_template: bool = False

    def __post_init__(self):
        fields = [f for _, f, _, _ in string.Formatter().parse(self.template) if f is not None]
        unknown = set(fields) - _FIELDS
        if unknown or fields.count("input") != 1:
            raise ValueError(
                f"prompt template {self.template!r}: needs {{input}} exactly once and only the fields "
                f"{sorted(_FIELDS)} (unknown: {sorted(unknown)}); write literal braces as {{{{ }}}}"
            )
        if self.num_pos_examples < 0:
            raise ValueError(f"num_pos_examples must be >= 0, got {self.num_pos_examples}")

    def parts(self, task: Task, instance: Instance, tokenizer=None) -> PromptParts:
        """The prompt for `instance` of `task`, split around the input text."""
        if instance.messages is not None:
            return chat_parts(instance.messages, tokenizer)
        template = task.template if task.template is not None else self.template
        examples = "".join(
            self.example_template.format(index=i + 1, input=ex.input, output=ex.outputs[0])
            for i, ex in enumerate(task.positive_examples[: self.num_pos_examples])
        )
        text = template.format(definition=task.definition, examples=examples, input=_SENTINEL, task=task.name)
        if self.use_chat_template:
            return chat_parts([{"role": "user", "content": text}], tokenizer, instance.input)
        prefix, suffix = text.split(_SENTINEL)
        return PromptParts(prefix, instance.input, suffix)

    def format(self, task: Task, instance: Instance, tokenizer=None) -> str:
        return self.parts(task, instance, tokenizer).text


def chat_parts(messages: list[dict[str, str]], tokenizer, input_text: str | None = None) -> PromptParts:
    """The tokenizer's chat template of `messages` followed by the generation prompt, split around the
    content of the last message (`input_text` where that content holds the input's placeholder)."""
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise DataError(
            "chat prompts (data.use_chat_template or chat rows with 'messages') need a tokenizer that has "
            "a chat template; use an instruct model (model.name_or_path) or prompt/completion rows "
            "(data.use_chat_template: false)"
        )
    last = messages[-1]["content"]
    if input_text is None:
        input_text, last = last, _SENTINEL
    rendered = [*messages[:-1], {**messages[-1], "content": last}]
    text = tokenizer.apply_chat_template(rendered, tokenize=False, add_generation_prompt=True)
    if text.count(_SENTINEL) != 1:
        raise DataError(
            "the tokenizer's chat template changes message contents, so the input cannot be placed in it; "
            "set data.use_chat_template: false or use prompt/completion rows"
        )
    prefix, suffix = text.split(_SENTINEL)
    return PromptParts(prefix, input_text, suffix, chat=True)


def format_prompt(
    task: Task, instance: Instance, template: PromptTemplate | None = None, tokenizer=None
) -> str:
    """The full prompt text for `instance` (paper template by default)."""
    return (template or PromptTemplate()).format(task, instance, tokenizer)
