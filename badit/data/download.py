"""Optional: fetch named SuperNI tasks from the natural-instructions repository (stdlib urllib only),
and turn raw task files into the folder-per-task layout with a seeded split."""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from badit.data.files import DataError, atomic_write_json, parse_json_bytes, read_json_file
from badit.data.splits import SplitSizes, split_indices
from badit.data.tasks import check_task_name, detect_layout, list_tasks, parse_task, task_file

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
