"""A small synthetic multi-task suite for the demo: tasks that conflict on shared inputs.

Six tasks in three pairs; both tasks of a pair read exactly the same inputs and map them in
opposite ways, which is the situation where tasks fight over shared parameters:

- ``demo_copy_words`` / ``demo_reverse_words``: repeat a word list / write it backwards;
- ``demo_sort_ascending`` / ``demo_sort_descending``: sort a word list A to Z / Z to A;
- ``demo_add_one`` / ``demo_subtract_one``: a number plus one / minus one.

``write_demo_tasks`` writes them in the folder-per-task layout of the SuperNI continual-learning
benchmark (``<task>/train.json``, ``dev.json``, ``test.json`` with the natural-instructions fields),
so the ordinary data loader reads them.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

from badit.data.files import atomic_write_text

# Short, common words: most are one token for the usual LLM tokenizers, so examples stay short.
WORDS = (
    "apple bird book cake car cat cloud cup desk dog door egg fish flag frog game gold hat hill horse "
    "ice key kite lamp leaf lion map milk moon nest note owl pen pig rain ring road rose salt ship "
    "shoe sky snow sock star sun tea tent tree van wall wind wolf"
).split()

AnswerFn = Callable[[str], str]


def _words(text: str) -> list[str]:
    return text.split()


TASKS: dict[str, tuple[str, str, AnswerFn]] = {
    # name: (input family, definition, mapping)
    "demo_copy_words": ("words", "Repeat the words of the input in the same order.", lambda s: s),
    "demo_reverse_words": (
        "words",
        "Write the words of the input in reverse order.",
        lambda s: " ".join(reversed(_words(s))),
    ),
    "demo_sort_ascending": (
        "words",
        "Sort the words of the input alphabetically, from A to Z.",
        lambda s: " ".join(sorted(_words(s))),
    ),
    "demo_sort_descending": (
        "words",
        "Sort the words of the input alphabetically, from Z to A.",
        lambda s: " ".join(sorted(_words(s), reverse=True)),
    ),
    "demo_add_one": ("number", "Add one to the number.", lambda s: str(int(s) + 1)),
    "demo_subtract_one": ("number", "Subtract one from the number.", lambda s: str(int(s) - 1)),
}


def _inputs(family: str, count: int, rng: random.Random) -> list[str]:
    """``count`` distinct inputs of a family: word lists of 3-4 distinct words, or numbers 10-998."""
    if family == "number":
        if count > 989:
            raise ValueError(
                f"the number tasks have 989 distinct inputs; asked for {count} (train + test + 2)"
            )
        return [str(n) for n in rng.sample(range(10, 999), count)]
    seen: set[str] = set()
    inputs: list[str] = []
    while len(inputs) < count:
        text = " ".join(rng.sample(WORDS, rng.randint(3, 4)))
        if text not in seen:
            seen.add(text)
            inputs.append(text)
    return inputs


def generate_demo_tasks(
    train_per_task: int = 300, test_per_task: int = 50, seed: int = 0, tasks: list[str] | None = None
) -> dict[str, dict[str, dict]]:
    """``{task: {"train"|"dev"|"test": natural-instructions task dict}}``; tasks of a pair share inputs."""
    names = list(TASKS) if tasks is None else tasks
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise ValueError(f"unknown demo task(s) {', '.join(unknown)}; available: {', '.join(TASKS)}")
    rng = random.Random(seed)
    total = train_per_task + test_per_task + 2  # + 2 positive examples
    pools = {family: _inputs(family, total, rng) for family in sorted({TASKS[n][0] for n in names})}
    suite: dict[str, dict[str, dict]] = {}
    for name in names:
        family, definition, mapping = TASKS[name]
        pool = pools[family]
        examples = [
            {"input": text, "output": mapping(text), "explanation": "The output follows the definition."}
            for text in pool[:2]
        ]
        instances = [
            {"id": f"{name}-{i}", "input": text, "output": [mapping(text)]} for i, text in enumerate(pool[2:])
        ]
        splits = {"train": instances[:train_per_task], "test": instances[train_per_task:]}
        splits["dev"] = splits["test"]  # as in the SuperNI continual-learning release
        suite[name] = {
            split: {
                "Definition": [definition],
                "Positive Examples": examples,
                "Negative Examples": [],
                "Input_language": ["English"],
                "Output_language": ["English"],
                "Instruction_language": ["English"],
                "Instances": rows,
            }
            for split, rows in splits.items()
        }
    return suite


def write_demo_tasks(
    output_dir: str | Path,
    train_per_task: int = 300,
    test_per_task: int = 50,
    seed: int = 0,
    tasks: list[str] | None = None,
) -> list[str]:
    """Write the suite as ``output_dir/<task>/{train,dev,test}.json``; returns the task names."""
    output_dir = Path(output_dir)
    suite = generate_demo_tasks(train_per_task, test_per_task, seed, tasks)
    for name, splits in suite.items():
        folder = output_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        for split, content in splits.items():
            _write_json(folder / f"{split}.json", content)
    return list(suite)


def _write_json(path: Path, content: dict) -> None:
    atomic_write_text(path, json.dumps(content, ensure_ascii=False, indent=1))
