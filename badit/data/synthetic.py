"""A small synthetic multi-task suite for the demo: tasks that conflict on shared inputs.

Six tasks in three pairs; both tasks of a pair read exactly the same inputs and map them in
opposite ways, which is the situation where tasks fight over shared parameters:

- ``demo_copy_words`` / ``demo_reverse_words``: repeat a word list / write it backwards;
- ``demo_sort_ascending`` / ``demo_sort_descending``: sort a word list A to Z / Z to A;
- ``demo_add_one`` / ``demo_subtract_one``: a number plus one / minus one.

``write_demo_tasks`` writes them in the folder-per-task layout of the SuperNI continual-learning
benchmark (``<task>/train.json``, ``dev.json``, ``test.json`` with the natural-instructions fields),
so the ordinary data loader reads them.

The **interference suite** (``data.path: generated:interference``, ``GeneratedSource``; no files) is
the controlled benchmark: eight tasks on exactly the same inputs (lists of 3-4 words of a 16-word
vocabulary), 200 train / 100 dev / 100 test examples each by default, with disjoint inputs per split
(configs/interference.yaml trains on the last two pairs, 100 train examples each):

- ``code_amber`` / ``code_birch``: replace each word by its number in code Amber / Birch. Birch gives
  every word the Amber number of another word (a cyclic shift of the vocabulary), so the two tasks
  want different outputs from the same tokens over the same output vocabulary: an arbitrary mapping
  that a shared adapter must hold twice, keyed on one instruction word. Conflict by construction.
- ``code_amber_reversed`` / ``code_birch_reversed``: the same codes, last word first. Each shares its
  codebook with the in-order task: a pair that helps (joint training sees every code twice as often).
- ``copy_words`` / ``reverse_words``: opposite orders that SmolLM2 already writes (at the CPU budget
  both reach 99-100 ROUGE-L alone or together): a conflict that costs nothing, the contrast.
- ``sort_ascending`` / ``sort_descending``: a rule the pretrained model half knows, in opposite
  directions on the same inputs; the one conflict a CPU budget can learn (a one-seed pilot: 92-93
  ROUGE-L with one LoRA per task, 83-85 with one LoRA for the four tasks).

Every task has its own definition sentence, so the tasks are distinguishable from the prompt (what
BADIT's routers pool). Codes are learned from training examples only (numbers 10-99, drawn with the
suite's seed), so test inputs (new word lists) measure whether a code was learned, not memorised lists.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from badit.data.files import DataError, atomic_write_text
from badit.data.tasks import SplitSizes, Task, check_task_name, parse_task

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
    return _word_lists(count, rng, WORDS)


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


# ----------------------------------------------------------------------------------------------
# The interference suite (see the module docstring)

INTERFERENCE_VOCABULARY = WORDS[:16]
"""16 words: each appears in about 200 x 3.5 / 16 = 44 training inputs per task and epoch, so a code
can be learned in an epoch or two at CPU scale, while test lists (of 16 x 15 x 14 + 16 x 15 x 14 x 13
= 47,040 possible) are new."""
INTERFERENCE_SIZES = SplitSizes(train=200, dev=100, test=100)
"""Default examples per task; ``data.split_sizes`` counts override them (the seed does not: the suite
is the same for every run, so seeds vary training, not data)."""

_CODE_DEFINITIONS = {
    "amber": "Amber code: replace every word of the input by its Amber code number, in the same order.",
    "birch": "Birch code: write the Birch code number of each word of the input, keeping the word order.",
}
_REVERSED_DEFINITIONS = {
    "amber": "Amber code, backwards: give the Amber code number of each word, starting from the last word.",
    "birch": "Birch code, backwards: give the Birch code numbers of the words, from the last word to the first.",
}


def interference_codes(seed: int = 0) -> dict[str, dict[str, str]]:
    """{code name: {word: number}}: Amber gives the 16 words distinct numbers 10-99; Birch gives word i
    Amber's number of word i + s (mod 16) for a seeded shift s in 1..15, so no word keeps its number
    and both codes use the same 16 numbers."""
    rng = random.Random(f"interference-codes-{seed}")
    numbers = [str(n) for n in rng.sample(range(10, 100), len(INTERFERENCE_VOCABULARY))]
    shift = rng.randrange(1, len(INTERFERENCE_VOCABULARY))
    n = len(numbers)
    return {
        "amber": dict(zip(INTERFERENCE_VOCABULARY, numbers)),
        "birch": {w: numbers[(i + shift) % n] for i, w in enumerate(INTERFERENCE_VOCABULARY)},
    }


def interference_tasks(seed: int = 0) -> dict[str, tuple[str, AnswerFn]]:
    """name: (definition, mapping) of the eight tasks of the interference suite."""
    codes = interference_codes(seed)

    def encode(code: dict[str, str], backwards: bool) -> AnswerFn:
        def answer(text: str) -> str:
            words = _words(text)
            return " ".join(code[w] for w in (reversed(words) if backwards else words))

        return answer

    tasks: dict[str, tuple[str, AnswerFn]] = {}
    for name, code in codes.items():
        tasks[f"code_{name}"] = (_CODE_DEFINITIONS[name], encode(code, False))
        tasks[f"code_{name}_reversed"] = (_REVERSED_DEFINITIONS[name], encode(code, True))
    tasks["copy_words"] = TASKS["demo_copy_words"][1:]
    tasks["reverse_words"] = TASKS["demo_reverse_words"][1:]
    tasks["sort_ascending"] = TASKS["demo_sort_ascending"][1:]
    tasks["sort_descending"] = TASKS["demo_sort_descending"][1:]
    return dict(sorted(tasks.items()))


def _word_lists(count: int, rng: random.Random, vocabulary: Sequence[str]) -> list[str]:
    """``count`` distinct lists of 3-4 distinct words of ``vocabulary`` (the demo's or the suite's)."""
    seen: set[str] = set()
    inputs: list[str] = []
    while len(inputs) < count:
        text = " ".join(rng.sample(vocabulary, rng.randint(3, 4)))
        if text not in seen:
            seen.add(text)
            inputs.append(text)
    return inputs


def generate_interference_tasks(
    sizes: SplitSizes = INTERFERENCE_SIZES, seed: int = 0, tasks: list[str] | None = None
) -> dict[str, dict[str, dict]]:
    """``{task: {"train"|"dev"|"test": natural-instructions task dict}}``; every task has the same
    inputs in each split (train, dev and test inputs disjoint), 2 positive examples of their own."""
    spec = interference_tasks(seed)
    names = list(spec) if tasks is None else tasks
    unknown = [n for n in names if n not in spec]
    if unknown:
        raise DataError(
            f"generated:interference has no task(s) {', '.join(unknown)}; its tasks: {', '.join(spec)}"
        )
    counts = {split: sizes.count(split, 0) for split in ("dev", "test")}
    counts["train"] = INTERFERENCE_SIZES.train if sizes.train is None else sizes.train
    pool = _word_lists(
        2 + sum(counts.values()), random.Random(f"interference-inputs-{seed}"), INTERFERENCE_VOCABULARY
    )
    start, ranges = 2, {}
    for split in ("train", "dev", "test"):
        ranges[split] = pool[start : start + counts[split]]
        start += counts[split]
    suite: dict[str, dict[str, dict]] = {}
    for name in names:
        definition, mapping = spec[name]
        examples = [{"input": t, "output": mapping(t), "explanation": definition} for t in pool[:2]]
        suite[name] = {
            split: {
                "Definition": [definition],
                "Positive Examples": examples,
                "Negative Examples": [],
                "Output_language": ["English"],
                "Instances": [
                    {"id": f"{name}-{split}-{i}", "input": t, "output": [mapping(t)]}
                    for i, t in enumerate(inputs)
                ],
            }
            for split, inputs in ranges.items()
            if inputs
        }
    return suite


GENERATED_PREFIX = "generated:"
GENERATED_SUITES = ("interference",)


@dataclass
class GeneratedSource:
    """A suite generated in memory (``data.path: generated:<suite>``): the ``TaskSource`` of badit.data."""

    path: str
    sizes: SplitSizes = INTERFERENCE_SIZES
    format: str = "generated"

    def __post_init__(self):
        suite = self.path[len(GENERATED_PREFIX) :]
        if suite not in GENERATED_SUITES:
            raise DataError(
                f"data.path {self.path!r}: no such generated suite; use one of "
                + ", ".join(GENERATED_PREFIX + s for s in GENERATED_SUITES)
            )

    def task_names(self) -> list[str]:
        return list(interference_tasks())

    def load(self, split: str, names: list[str] | None = None) -> list[Task]:
        names = sorted(names) if names is not None else self.task_names()
        for name in names:
            check_task_name(name)
        suite = generate_interference_tasks(self.sizes, tasks=names)
        missing = [n for n in names if split not in suite[n]]
        if missing:
            raise DataError(
                f"{self.path}: the {split} split is empty (data.split_sizes gives it 0 examples); "
                f"set data.split_sizes.{split} above 0"
            )
        return [parse_task(suite[n][split], n, f"{self.path}/{n}/{split}") for n in names]

    def notes(self) -> list[str]:
        return [
            f"generated in memory (train {self.sizes.train}, dev {self.sizes.dev}, test {self.sizes.test} "
            "per task; the same data for every seed)"
        ]


def generated_sizes(sizes: Mapping[str, object] | SplitSizes | None) -> SplitSizes:
    """The suite's default sizes with the given counts over them."""
    if isinstance(sizes, SplitSizes):
        return sizes
    fields = {k: v for k, v in dict(sizes or {}).items() if k in ("train", "dev", "test")}
    try:
        return SplitSizes(**{**vars(INTERFERENCE_SIZES), **fields})
    except (TypeError, ValueError) as error:
        raise DataError(f"data.split_sizes: {error}") from None
