"""Hugging Face `datasets` as own-data tables: a folder written by `save_to_disk`, data files
(JSON/JSONL, CSV, Parquet) or a hub name, loaded by the library itself; or a `Dataset` /
`DatasetDict` already in memory.

A `DatasetDict` with more than a train split keeps its splits (train, validation/dev, test); a lone
`Dataset`, data files and a dataset with only a train split are one table, split by a split column or
with the seed. `datasets` is imported only when such a source is used (it pulls in pyarrow and pandas).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from badit.data.files import DataError
from badit.data.rows import SPLIT_NAMES, Columns, Table

FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
"""`datasets.load_dataset` builder for each data-file extension."""


def is_saved_dataset(path: Path) -> bool:
    """True for a folder written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk`."""
    return path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file())


def load_hf(path: str, columns: Columns) -> list[Table]:
    """The tables of the dataset at `path` (saved folder, data file or hub name)."""
    import datasets

    where = Path(path)
    try:
        if is_saved_dataset(where):
            data = datasets.load_from_disk(str(where))
        elif where.is_file():
            builder = FILE_BUILDERS.get(where.suffix.lower())
            if builder is None:
                raise DataError(
                    f"{path}: datasets cannot read {where.suffix or 'extension-less'} files here; "
                    f"use one of {', '.join(FILE_BUILDERS)}"
                )
            data = datasets.load_dataset(builder, data_files=str(where))
        elif where.exists():
            raise DataError(
                f"{path}: a folder, but not one written by save_to_disk (no state.json or dataset_dict.json); "
                "give the saved dataset's folder, a data file or a SuperNI folder"
            )
        else:
            data = datasets.load_dataset(path)
    except DataError:
        raise
    except Exception as error:  # datasets raises many types (hub, network, file format, arrow)
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise DataError(
            f"{path}: datasets could not load it ({type(error).__name__}: {first}); check data.path "
            "(a saved dataset folder, a data file, or a hub name reachable from here)"
        ) from None
    return dataset_tables(data, path, columns)


def dataset_tables(data: Any, source: str, columns: Columns) -> list[Table]:
    """Tables of an in-memory `Dataset` or `DatasetDict` (only the columns in `columns` are read)."""
    import datasets

    if isinstance(data, datasets.Dataset):
        return [_table(data, source, None, columns)]
    if not isinstance(data, datasets.DatasetDict):
        raise DataError(f"{source}: expected a datasets.Dataset or DatasetDict, got {type(data).__name__}")
    if set(data) == {"train"}:
        return [_table(data["train"], source, None, columns)]
    unknown = sorted(set(data) - set(SPLIT_NAMES))
    if unknown:
        raise DataError(
            f"{source}: dataset split(s) {', '.join(unknown)} are not {', '.join(SPLIT_NAMES)}; "
            "rename them (DatasetDict({'train': ..., 'test': ...}).save_to_disk(...)) or keep one split"
        )
    return [_table(data[name], f"{source} [{name}]", SPLIT_NAMES[name], columns) for name in sorted(data)]


def _table(dataset, source: str, split: str | None, columns: Columns) -> Table:
    wanted = [c for c in dataclasses.astuple(columns) if c in dataset.column_names]
    rows = dataset.select_columns(wanted).to_list() if wanted else [{}] * len(dataset)
    return Table(source, list(enumerate(rows)), tuple(dataset.column_names), split, unit="row")
