"""Tasks and instances; tasks in the natural-instructions (SuperNI) format, read from either of two layouts.

- folder per task: `ROOT/<task>/{train,dev,test}.json` (the continual-learning benchmark layout);
- raw release files: `ROOT/taskNNN_name.json`, split here with a seed (see `badit.data.splits`).

Every file is validated: a problem raises `DataError` naming the file, the field and the fix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from badit.data.files import DataError, inside, read_json_file
from badit.data.splits import SplitSizes, split_indices

SPLITS = ("train", "dev", "test")
Split = Literal["train", "dev", "test"]
_TASK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
_MAX_LISTED = 5
VERBATIM = "{input}"  # the prompt template of own-data tasks: each prompt is used as written


@dataclass
class Instance:
    id: str
    input: str
    outputs: list[str]  # every acceptable answer; training picks one (seeded), scoring takes the max
    messages: list[dict[str, str]] | None = None
    """Chat data: the conversation before the answer ({role, content} dicts). The prompt is then the
    tokenizer's chat template of it, and `input` is the content of its last message (the part that is
    truncated to fit, see `badit.data.prompts`)."""


@dataclass
class Task:
    name: str
    definition: str
    positive_examples: list[Instance]
    instances: list[Instance]
    output_language: list[str] = field(default_factory=lambda: ["English"])
    source: str = ""  # the file the task was read from
    notes: list[str] = field(default_factory=list)  # harmless oddities worth reporting (see check_data)
    template: str | None = None
    """The task's own prompt template (own data: `VERBATIM`, the prompt as written); None: the run's
    template (the paper's for SuperNI tasks)."""

    @property
    def is_english(self) -> bool:
        return all(lang.strip().lower() == "english" for lang in self.output_language)


def check_task_name(name: str) -> str:
    """`name` if it is a plain task name; DataError for anything that could leave the data folder."""
    if not isinstance(name, str) or not _TASK_NAME.fullmatch(name) or ".." in name:
        raise DataError(
            f"task name {name!r} is not a plain name (letters, digits, '_', '-', '.'; no '/' and no '..'); "
            "use the task's folder or file name, e.g. 'task002_quoref_answer_generation'"
        )
    return name


def _strings(value: Any) -> list[str] | None:
    """A string or a non-empty list of strings as a list; None for anything else."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    return None


def _instance(raw: Any, where: str, default_id: str, problems: list[str]) -> Instance | None:
    if not isinstance(raw, dict):
        problems.append(f"{where}: expected an object with 'input' and 'output', got {type(raw).__name__}")
        return None
    missing = [k for k in ("input", "output") if k not in raw]
    if missing:
        problems.append(f"{where}: missing field {', '.join(repr(k) for k in missing)}")
        return None
    if not isinstance(raw["input"], str):
        problems.append(f"{where}: 'input' must be a string, got {type(raw['input']).__name__}")
        return None
    outputs = _strings(raw["output"])
    if outputs is None:
        problems.append(f"{where}: 'output' must be a string or a non-empty list of strings")
        return None
    return Instance(id=str(raw.get("id", default_id)), input=raw["input"], outputs=outputs)


def parse_task(data: Any, name: str, source: str, id_prefix: str | None = None) -> Task:
    """Validate one task file's parsed JSON and build a Task. `source` names the file in errors;
    instances without an `id` get `{id_prefix}-{index}` (default prefix: the task name)."""
    id_prefix = id_prefix or name
    if not isinstance(data, dict):
        raise DataError(
            f"{source}: expected a JSON object with 'Definition' and 'Instances' at the top level"
        )
    problems: list[str] = []
    notes: list[str] = []
    for key in ("Definition", "Instances"):
        if key not in data:
            problems.append(f"missing field {key!r}")
    definitions = _strings(data.get("Definition", [""]))
    if definitions is None:
        problems.append("'Definition' must be a string or a non-empty list of strings")
    elif len(definitions) > 1:
        notes.append(f"'Definition' has {len(definitions)} entries; only the first is used (as Tk-Instruct)")
    raw_instances = data.get("Instances", [])
    if not isinstance(raw_instances, list):
        problems.append("'Instances' must be a list")
        raw_instances = []
    elif "Instances" in data and not raw_instances:
        problems.append("'Instances' is empty: the task has no examples for this split")
    raw_examples = data.get("Positive Examples", [])
    if not isinstance(raw_examples, list):
        problems.append("'Positive Examples' must be a list")
        raw_examples = []
    languages = _strings(data.get("Output_language", ["English"])) or ["English"]

    instances = [
        _instance(r, f"Instances[{i}]", f"{id_prefix}-{i}", problems) for i, r in enumerate(raw_instances)
    ]
    examples = [
        _instance(r, f"Positive Examples[{i}]", f"{name}-pos-{i}", problems)
        for i, r in enumerate(raw_examples)
    ]
    if problems:
        listed = "; ".join(problems[:_MAX_LISTED])
        more = f" (and {len(problems) - _MAX_LISTED} more)" if len(problems) > _MAX_LISTED else ""
        raise DataError(
            f"{source}: {listed}{more}. Each task file needs 'Definition' (string or list of strings) and "
            "'Instances' (a non-empty list of objects with 'input' and 'output' (string or list of strings))"
        )
    ids = [inst.id for inst in instances]
    if len(set(ids)) != len(ids):
        notes.append(f"{len(ids) - len(set(ids))} duplicate instance ids")
    if not all(lang.strip().lower() == "english" for lang in languages):
        notes.append(f"output language {languages}: ROUGE-L uses the non-English tokenizer (see metrics)")
    return Task(
        name=name,
        definition=definitions[0].strip(),
        positive_examples=examples,
        instances=instances,
        output_language=languages,
        source=source,
        notes=notes,
    )


def detect_layout(root: Path) -> Literal["folders", "raw"]:
    """'folders' if `root` holds task folders with split files, 'raw' if it holds task JSON files."""
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; give the folder that holds the task folders or task files")
    has_folders = any(
        p.is_dir() and any((p / f"{s}.json").exists() for s in SPLITS) for p in root.iterdir() if _visible(p)
    )
    has_files = any(p.suffix == ".json" and p.is_file() for p in root.iterdir() if _visible(p))
    if has_folders and has_files:
        raise DataError(
            f"{root}: holds both task folders (<task>/train.json ...) and raw task files (<task>.json); "
            "keep one layout per data folder"
        )
    if not (has_folders or has_files):
        raise DataError(
            f"{root}: no tasks found; expected <task>/train.json, <task>/test.json (folder per task) "
            "or raw taskNNN_name.json files"
        )
    return "folders" if has_folders else "raw"


def _visible(p: Path) -> bool:
    return not p.name.startswith(".")


def list_tasks(path: str | Path) -> list[str]:
    """Names of the tasks under `path`, sorted (never file-system order)."""
    root = Path(path)
    if detect_layout(root) == "folders":
        return sorted(p.name for p in root.iterdir() if _visible(p) and p.is_dir())
    return sorted(p.stem for p in root.iterdir() if _visible(p) and p.suffix == ".json" and p.is_file())


def task_file(root: Path, name: str, split: str) -> Path:
    """The file that holds task `name` (split file or raw file), checked to stay inside `root`."""
    check_task_name(name)
    layout = detect_layout(root)
    path = root / name / f"{split}.json" if layout == "folders" else root / f"{name}.json"
    inside(root, path.parent)
    if not path.exists():
        hint = (
            f"add {split}.json to the task folder (e.g. with `badit.data.write_split_layout` from the raw task file)"
            if layout == "folders" and (root / name).is_dir()
            else f"check the task name; known tasks: {', '.join(list_tasks(root)[:10])}"
        )
        raise DataError(f"{path}: no {split} data for task {name!r}; {hint}")
    inside(root, path)
    return path


def load_task(path: str | Path, name: str, split: Split = "train", sizes: SplitSizes | None = None) -> Task:
    """One task's `split` from a data folder of either layout (raw files are split with `sizes`)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    root = Path(path)
    file = task_file(root, name, split)
    raw_layout = detect_layout(root) == "raw"
    task = parse_task(read_json_file(file), name, str(file), name if raw_layout else f"{name}-{split}")
    if raw_layout:
        sizes = sizes or SplitSizes()
        if split == "dev" and sizes.dev == 0:
            raise DataError(f"{file}: raw task files have no dev split unless dev_size > 0 is given")
        keep = split_indices(len(task.instances), name, sizes, str(file))[split]
        task.instances = [task.instances[i] for i in keep]
    return task


def load_tasks(
    path: str | Path, split: Split = "train", tasks: list[str] | None = None, sizes: SplitSizes | None = None
) -> list[Task]:
    """The tasks under `path` (all, or the named ones), sorted by name; each holds the `split` instances."""
    names = list_tasks(path) if tasks is None else [check_task_name(n) for n in tasks]
    if not names:
        raise DataError(f"{path}: no tasks found")
    return [load_task(path, n, split, sizes) for n in sorted(names)]
