"""Tasks and instances; tasks in the natural-instructions (SuperNI) format, read from either of two layouts,
the seeded split of data that comes without one, the continual task order, and the SuperNI files'
download.

- folder per task: `ROOT/<task>/{train,dev,test}.json` (the continual-learning benchmark layout);
- raw release files: `ROOT/taskNNN_name.json`, split here with a seed (`split_indices`; own-data rows
  without a split column are split the same way).

Every file is validated: a problem raises `DataError` naming the file, the field and the fix.
Task order for the continual setting: sorted by name, then a seeded shuffle or an explicit list; never
file-system order, so a run is reproducible on any machine.
"""

from __future__ import annotations

import random
import re
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from badit.data.files import DataError, atomic_write_json, inside, parse_json_bytes, read_json_file

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
    if len(set(ids)) != len(ids):  # predictions and paired comparisons match examples by (task, id)
        repeated = Counter(ids).most_common(1)[0][0]
        raise DataError(
            f"{source}: {len(ids) - len(set(ids))} duplicate instance ids (e.g. {repeated!r}); give each "
            "instance its own 'id' (predictions and paired comparisons match examples by id)"
        )
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


# Seeded splits of tasks that come without one (raw task files, own-data rows without a split column).

OWN_DATA_TEST_FRACTION = 0.1
"""Own data (JSONL, CSV, datasets) without a split: 10% of each task's examples are held out for
testing (at least one), the usual share when nothing else is known about the data."""


def _check_size(name: str, value: int | float | None) -> None:
    if value is None and name == "train":
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"split size {name} must be a count >= 0 or a fraction in (0, 1), got {value!r}")
    if isinstance(value, float) and value >= 1 and not value.is_integer():
        raise ValueError(
            f"split size {name}={value}: give a count (e.g. 20) or a fraction below 1 (e.g. 0.1)"
        )


@dataclass(frozen=True)
class SplitSizes:
    """Instances per task in each split (defaults: the continual SuperNI benchmark, 1000 train / 100 test).

    `dev` and `test` are counts, or fractions of the task's instances when given as a float in (0, 1)
    (rounded, at least 1). `train=None` keeps every instance left after test and dev.
    `head_test=True` takes the first `test` instances of the file as test data, as Tk-Instruct does for
    SuperNI's evaluation tasks (their first 100 instances are label-balanced); the rest is shuffled.
    """

    train: int | None = 1000
    dev: int | float = 0
    test: int | float = 100
    seed: int = 42
    head_test: bool = False

    def __post_init__(self):
        for name in ("train", "dev", "test"):
            _check_size(name, getattr(self, name))

    def count(self, split: str, n: int) -> int:
        """How many of a task's `n` instances go to `split` ("dev" or "test")."""
        value = getattr(self, split)
        if isinstance(value, float) and 0 < value < 1:
            return max(1, round(value * n))
        return int(value)


OWN_DATA_SIZES = SplitSizes(train=None, dev=0, test=OWN_DATA_TEST_FRACTION)


def split_indices(n: int, task: str, sizes: SplitSizes, source: str = "") -> dict[str, list[int]]:
    """Indices of the instances of a task with `n` instances that go to each split.

    The shuffle is seeded by (seed, task name), so adding or removing other tasks never changes a
    task's split. Test takes its share first, then dev, then train takes up to `sizes.train` of the rest.
    """
    n_test, n_dev = sizes.count("test", n), sizes.count("dev", n)
    if n <= n_test + n_dev:
        raise DataError(
            f"{source or task}: {n} instances, but test ({n_test}) + dev ({n_dev}) leave none "
            "for training; lower the test/dev sizes (data.split_sizes.test / .dev; `badit data check`: "
            "--test-size / --dev-size), add examples or drop the task"
        )
    order = list(range(n))
    rng = random.Random(f"{sizes.seed}/{task}")  # str seeds are hashed with SHA-512: stable across runs
    if sizes.head_test:
        head, rest = order[:n_test], order[n_test:]
        rng.shuffle(rest)
        order = head + rest
    else:
        rng.shuffle(order)
    test = order[:n_test]
    dev = order[n_test : n_test + n_dev]
    train = order[n_test + n_dev :][: sizes.train]
    return {"train": sorted(train), "dev": sorted(dev), "test": sorted(test)}


def task_order(
    names: Iterable[str], seed: int | None = None, order: Sequence[str] | None = None
) -> list[str]:
    """The order in which tasks are learnt.

    - `order` given: exactly that list (each name must be known, no repeats; a subset is allowed);
    - else `seed` given: the sorted names shuffled with `random.Random(seed)`;
    - else: sorted by name.
    """
    known = sorted(set(names))
    if order is not None:
        order = list(order)
        unknown = [n for n in order if n not in known]
        repeated = sorted({n for n in order if order.count(n) > 1})
        if unknown or repeated:
            raise ValueError(
                f"task order: unknown tasks {unknown}, repeated {repeated}; known tasks are {known}"
            )
        return order
    if seed is not None:
        random.Random(seed).shuffle(known)
    return known


# Optional: fetch named SuperNI tasks from the natural-instructions repository (stdlib urllib only)
# and write the folder-per-task layout with a seeded split.

DEFAULT_BASE_URL = "https://raw.githubusercontent.com/allenai/natural-instructions/master/tasks/"


def fetch_task(name: str, base_url: str = DEFAULT_BASE_URL, timeout: float = 60.0) -> dict[str, Any]:
    """The parsed, validated JSON of task `name` at `base_url/<name>.json` (http, https or file URL)."""
    check_task_name(name)
    url = urllib.parse.urljoin(base_url.rstrip("/") + "/", urllib.parse.quote(name) + ".json")
    if urllib.parse.urlparse(url).scheme not in ("http", "https", "file"):
        raise DataError(f"{url}: only http, https and file URLs are supported; check base_url")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            raw = response.read()
    except urllib.error.HTTPError as e:
        raise DataError(
            f"{url}: download failed (HTTP {e.code} {e.reason}); check the task name and base_url"
        ) from None
    except OSError as e:  # URLError and connection errors
        reason = getattr(e, "reason", e)
        raise DataError(f"{url}: download failed ({reason}); check the task name and base_url") from None
    data = parse_json_bytes(raw, url)
    parse_task(data, name, url)  # validate before anything is written
    return data


def _write_split_files(
    data: dict[str, Any], name: str, out_dir: Path, sizes: SplitSizes, source: str
) -> None:
    """`out_dir/<name>/{train,dev,test}.json`, each the task file with its split's instances."""
    task = parse_task(data, name, source)
    for split, keep in split_indices(len(task.instances), name, sizes, source).items():
        if keep or split != "dev":
            atomic_write_json(
                out_dir / name / f"{split}.json", {**data, "Instances": [data["Instances"][i] for i in keep]}
            )


def download_tasks(
    names: Iterable[str],
    dest: str | Path,
    base_url: str = DEFAULT_BASE_URL,
    sizes: SplitSizes | None = None,
    timeout: float = 60.0,
) -> list[str]:
    """Download tasks into `dest`: raw `<name>.json` files, or, with `sizes`, the folder-per-task layout
    split with `sizes.seed`. Every task is fetched and validated before any file is written; each
    file is written atomically. Returns the task names."""
    names = [check_task_name(n) for n in names]
    fetched = {name: fetch_task(name, base_url, timeout) for name in names}
    dest = Path(dest)
    for name, data in fetched.items():
        if sizes is None:
            atomic_write_json(dest / f"{name}.json", data)
        else:
            _write_split_files(data, name, dest, sizes, f"{base_url} {name}")
    return names


def write_split_layout(
    raw_dir: str | Path, out_dir: str | Path, sizes: SplitSizes | None = None
) -> list[str]:
    """Split every raw task file in `raw_dir` with `sizes` and write the folder-per-task layout."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    if detect_layout(raw_dir) != "raw":
        raise DataError(f"{raw_dir}: expected raw taskNNN_name.json files, found task folders")
    names = list_tasks(raw_dir)
    for name in names:
        file = task_file(raw_dir, name, "train")
        _write_split_files(read_json_file(file), name, out_dir, sizes or SplitSizes(), str(file))
    return names
