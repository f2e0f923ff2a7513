"""Own data as rows: {task, prompt, completion} or chat {task, messages}, from JSONL, CSV or a
`datasets` dataset, validated row by row and grouped into tasks.

A row is one example. Its format is set by the columns it fills:
- prompt/completion: `prompt` (the whole prompt, used as written) and `completion` (a string, or a
  list of strings when several answers are acceptable: training picks one, scoring takes the max;
  numbers are taken as JSON writes them);
- chat: `messages`, a list of {role, content}; the last turn must be the assistant's answer, the
  turns before it become the prompt through the tokenizer's chat template at tokenisation time.
Optional columns: `task` (one table may hold many tasks; without the column the table is one task
named after the file), `split` (train / dev / test; without it test examples are split off per task
with a seed, see `badit.data.tasks`) and `id`. Every column name can be changed (`Columns`).

Every problem names the table, the row (JSONL/CSV: its line in the file; datasets: its index) and
the column, and says how to fix it.

Reading: JSONL and CSV with the standard library's json and csv modules rather than through `datasets`
(a bad line then gets an error naming that line, nothing is cached on disk, and a file is read in a
blink); `data.format: datasets` reads a folder written by `save_to_disk`, data files (JSON/JSONL, CSV,
Parquet) or a hub name through `datasets` itself, or takes a `Dataset` / `DatasetDict` already in
memory. A `DatasetDict` with more than a train split keeps its splits (train, validation/dev, test); a
lone `Dataset`, data files and a dataset with only a train split are one table, split by a split column
or with the seed. `datasets` is imported only when such a source is used (it pulls in pyarrow and pandas).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from badit.data.files import DataError, read_text
from badit.data.tasks import Instance, Split, check_task_name

SPLIT_NAMES = {"train": "train", "dev": "dev", "validation": "dev", "valid": "dev", "test": "test"}
"""Values of the split column (and names of a dataset's splits) and the split each one means."""

MAX_PROBLEMS = 20  # problems listed by `badit data check`; the rest are counted


@dataclass(frozen=True)
class Columns:
    """The column that holds each field of a row (`data.*_column` in the run config)."""

    task: str = "task"
    prompt: str = "prompt"
    answer: str = "completion"
    messages: str = "messages"
    split: str = "split"
    id: str = "id"


@dataclass(frozen=True)
class Table:
    """Rows read from one file or one split of a dataset, not validated yet.

    `rows` pairs each row with its number: its line in a JSONL/CSV file (`unit` "line"), its index in
    a dataset (`unit` "row"); `columns` lists the table's columns when it has a fixed set (CSV header,
    dataset features), None when each row has its own keys (JSONL); `split` is the split the whole
    table belongs to (a dataset's split), if any.
    """

    source: str
    rows: Sequence[tuple[int, Any]]
    columns: tuple[str, ...] | None = None
    split: Split | None = None
    unit: str = "line"
    long_rows: tuple[tuple[int, int], ...] = ()  # (line, characters) of the JSONL lines over LONG_ROW


LONG_ROW = 1_000_000
"""Characters of one JSONL line worth a note: about 250k tokens, beyond any model's context, so the
prompt will be cut to data.max_source_length (tokenisation cuts such a field first: tokenize.py)."""


def table_notes(table: Table, columns: Columns) -> list[str]:
    """What `badit data check` reports about a table without refusing it: very long lines, and, in a
    JSONL file, numbers where the answer text belongs (read as JSON writes them: 5 -> "5")."""
    notes = [
        f"{table.source} line {number}: {chars / 1e6:.1f} million characters; the prompt is cut to "
        "data.max_source_length tokens (from the left), so most of it is never seen"
        for number, chars in table.long_rows
    ]
    if table.columns is None and table.unit == "line":  # JSONL: the file's own values (not `datasets`')
        numeric = [
            (number, row[columns.answer])
            for number, row in table.rows
            if isinstance(row, dict) and _has_number(row.get(columns.answer))
        ]
        if numeric:
            number, value = numeric[0]
            more = f" (and {len(numeric) - 1} more lines)" if len(numeric) > 1 else ""
            notes.append(
                f"{table.source} line {number}, column {columns.answer!r}: {json.dumps(value)} holds a number, "
                f'not text; it is read as the text JSON writes{more}; write answers as strings ("5") to be sure'
            )
    return notes


def _has_number(value: Any) -> bool:
    values = value if isinstance(value, list) else [value]
    return any(isinstance(v, (int, float)) for v in values)


@dataclass(frozen=True)
class Example:
    """One valid row: its task, its split (None: to be split off with the seed) and the instance."""

    task: str
    split: Split | None
    instance: Instance


def table_columns(table: Table) -> set[str]:
    """The columns of a table: its fixed set, or every key used by a row (JSONL)."""
    if table.columns is not None:
        return set(table.columns)
    return {key for _, row in table.rows if isinstance(row, dict) for key in row}


def _filled(value: Any) -> bool:
    return value is not None and not (isinstance(value, str) and not value.strip())


def _column_hint(table: Table, column: str, field: str) -> str:
    found = f" (columns found: {', '.join(table.columns)})" if table.columns is not None else ""
    return f"rename the column to {column!r} or set data.{field}_column to the right one{found}"


def _answer_text(value: Any) -> Any:
    """A number or boolean as JSON writes it (`4` -> "4"): `datasets` stores a column that mixes strings
    and lists as JSON and reads "4" back as 4. Other values unchanged."""
    return json.dumps(value) if isinstance(value, (int, float)) else value


def _answers(value: Any) -> list[str] | None:
    """A non-empty string, or a non-empty list of non-empty strings, as a list; None otherwise."""
    values = [_answer_text(v) for v in (value if isinstance(value, list) else [value])]
    if values and all(isinstance(v, str) and v.strip() for v in values):
        return values
    return None


def _chat(value: Any) -> tuple[list[dict[str, str]], str] | str:
    """(prompt messages, answer) of a chat row, or the problem with it as a string."""
    if not isinstance(value, list) or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in value
    ):
        return "must be a list of {role, content} objects with string values"
    if len(value) < 2 or value[-1]["role"] != "assistant":
        return "needs at least one turn followed by the assistant's answer as the last turn"
    if not value[-1]["content"].strip():
        return "the last (assistant) turn is empty: the answer is missing"
    if not value[-2]["content"].strip():
        return "the turn before the answer is empty: the prompt is missing"
    return [{"role": m["role"], "content": m["content"]} for m in value[:-1]], value[-1]["content"]


class _RowProblem(Exception):
    """What is wrong with one column of a row, and the fix."""

    def __init__(self, column: str, problem: str, fix: str):
        super().__init__(f"column {column!r}: {problem}; {fix}")


def _table_problem(table: Table, columns: Columns, default_task: str | None) -> str | None:
    """A problem of the whole table (no rows, a missing column), or None."""
    if not table.rows:
        return f"{table.source}: no rows; add examples (one JSON object per line, or one CSV row each)"
    if not any(isinstance(row, dict) for _, row in table.rows):
        number, row = table.rows[0]
        kind = "a JSON array" if isinstance(row, list) else f"a {type(row).__name__}"
        return (
            f"{table.source}: {table.unit} {number} is {kind}, not an object with columns; a .jsonl file holds "
            "one JSON object per line (a file holding one JSON array of objects: name it .json)"
        )
    keys = table_columns(table)
    if columns.prompt not in keys and columns.messages not in keys:
        return (
            f"{table.source}: missing column {columns.prompt!r} (or {columns.messages!r} for chat rows); "
            + _column_hint(table, columns.prompt, "prompt")
        )
    if columns.messages not in keys and columns.answer not in keys:
        return f"{table.source}: missing column {columns.answer!r}; " + _column_hint(
            table, columns.answer, "answer"
        )
    if columns.task not in keys and default_task is None:
        return f"{table.source}: missing column {columns.task!r}; " + _column_hint(
            table, columns.task, "task"
        )
    return None


def _required(row: dict, column: str, problem: str, fix: str) -> Any:
    """The value in ``column`` of ``row``; a _RowProblem (``problem``, ``fix``) where it is empty or missing."""
    value = row.get(column)
    if not _filled(value):
        raise _RowProblem(column, problem, fix)
    return value


def _row_task(row: dict, column: str) -> str:
    task = _required(
        row,
        column,
        "empty: every row needs its task's name",
        "fill it in (or drop the column for a one-task file)",
    )
    try:
        return check_task_name(str(task).strip())
    except DataError as error:
        raise _RowProblem(
            column, str(error).split(";")[0], "use letters, digits, '_', '-' and '.' only"
        ) from None


def _row_split(row: dict, column: str) -> Split:
    value = _required(
        row,
        column,
        "empty: with a split column every row needs its split",
        "fill it in (train, dev or test), or drop the column to split off test examples with the seed",
    )
    split = SPLIT_NAMES.get(str(value).strip().lower())
    if split is None:
        raise _RowProblem(column, f"{value!r} is not a split", f"use one of {', '.join(SPLIT_NAMES)}")
    return split


def _row_content(
    row: dict, chat: bool, columns: Columns
) -> tuple[str, list[str], list[dict[str, str]] | None]:
    """(input, answers, prompt messages or None) of a chat or prompt/completion row."""
    if chat:
        parsed = _chat(row[columns.messages])
        if isinstance(parsed, str):
            example = '[{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]'
            raise _RowProblem(columns.messages, parsed, f"e.g. {example}")
        messages, answer = parsed
        return messages[-1]["content"], [answer], messages
    prompt = row[columns.prompt]
    if not isinstance(prompt, str):
        raise _RowProblem(
            columns.prompt, f"must be a string, got {type(prompt).__name__}", "write the prompt as text"
        )
    outputs = _answers(row.get(columns.answer))
    if outputs is None:
        missing = not _filled(row.get(columns.answer))
        raise _RowProblem(
            columns.answer,
            "empty or missing: the answer is missing"
            if missing
            else "must be a non-empty string or a list of non-empty strings",
            "fill in the answer (several acceptable answers: a list of strings) or drop the row",
        )
    return prompt, outputs, None


def _row_format(row: dict, columns: Columns, table_format: tuple[str, str] | None) -> bool:
    """Whether the row is a chat row; _RowProblem when it has neither or both formats, or not the table's
    format (`table_format`: the format of the first valid row and where that row is)."""
    chat, plain = _filled(row.get(columns.messages)), _filled(row.get(columns.prompt))
    if chat and plain:
        raise _RowProblem(
            columns.messages,
            f"the row also has {columns.prompt!r}",
            "give each row either prompt/completion or messages",
        )
    if not (chat or plain):
        column = columns.messages if table_format and table_format[0] == "chat" else columns.prompt
        raise _RowProblem(column, "empty or missing: the prompt is missing", "fill it in or drop the row")
    row_format = "chat" if chat else "prompt/completion"
    if table_format is not None and row_format != table_format[0]:
        raise _RowProblem(
            columns.messages if chat else columns.prompt,
            f"a {row_format} row, but {table_format[1]} is a {table_format[0]} row (mixed formats)",
            "keep one format per file: put chat rows and prompt/completion rows in separate files",
        )
    return chat


def parse_table(table: Table, columns: Columns, default_task: str | None) -> tuple[list[Example], list[str]]:
    """The valid rows of `table` as examples, and one message per problem found (all rows are read).

    `default_task` names the task of a table without a task column (None: the column is required).
    A table holds one format: the first valid row's (prompt/completion or chat) decides.
    """
    problem = _table_problem(table, columns, default_task)
    if problem:
        return [], [problem]
    keys = table_columns(table)
    has_task, has_split = columns.task in keys, columns.split in keys and table.split is None
    examples: list[Example] = []
    problems: list[str] = []
    table_format: tuple[str, str] | None = None  # (format, where its first row is)
    seen: dict[tuple, str] = {}  # (task, split, id) -> where it first appears
    for number, row in table.rows:
        where = f"{table.unit} {number}"
        if not isinstance(row, dict):
            problems.append(
                f"{table.source} {where}: expected an object with columns, got {type(row).__name__}"
            )
            continue
        try:
            chat = _row_format(row, columns, table_format)
            table_format = table_format or ("chat" if chat else "prompt/completion", where)
            task = _row_task(row, columns.task) if has_task else default_task
            split = _row_split(row, columns.split) if has_split else table.split
            prompt, outputs, messages = _row_content(row, chat, columns)
        except _RowProblem as error:
            problems.append(f"{table.source} {where}, {error}")
            continue
        row_id = row.get(columns.id)
        if not _filled(row_id):
            row_id = f"{task}-{table.split}-{number}" if table.split else f"{task}-{number}"
        first = seen.setdefault((task, split, str(row_id)), where)
        if first != where:  # predictions and paired comparisons match examples by (task, id)
            problems.append(
                f"{table.source} {where}, column {columns.id!r}: id {str(row_id)!r} repeats {first} of task "
                f"{task!r}; give each example its own id (or drop the column)"
            )
            continue
        examples.append(Example(task, split, Instance(str(row_id), prompt, outputs, messages)))
    return examples, problems


def parse_tables(
    tables: Iterable[Table], columns: Columns, default_task: str | None
) -> tuple[list[Example], list[str]]:
    """`parse_table` over several tables (a dataset's splits), examples and problems concatenated."""
    examples, problems = [], []
    for table in tables:
        more, found = parse_table(table, columns, default_task)
        examples += more
        problems += found
    return examples, problems


def problems_error(problems: Sequence[str], check_hint: str) -> DataError:
    """One DataError for a list of problems: the first in full, the others counted."""
    more = f" (and {len(problems) - 1} more problems: {check_hint} lists them)" if len(problems) > 1 else ""
    return DataError(problems[0] + more)


# Reading tables: JSONL and CSV files (a row keeps its line), `datasets` (a row keeps its index).


def read_jsonl(path: str | Path) -> Table:
    """One JSON object per line (blank lines skipped)."""
    path = Path(path)
    rows, long_rows = [], []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        if len(line) > LONG_ROW:
            long_rows.append((number, len(line)))
        try:
            rows.append((number, json.loads(line)))
        except json.JSONDecodeError as e:
            raise DataError(
                f"{path} line {number}: invalid JSON at column {e.colno} ({e.msg}); "
                "each line must be one JSON object"
            ) from None
        except RecursionError:
            raise DataError(
                f"{path} line {number}: JSON nested too deeply to be a row; fix the line"
            ) from None
    return Table(str(path), rows, long_rows=tuple(long_rows))


def read_csv(path: str | Path) -> Table:
    """A CSV file with a header row (an Excel byte-order mark is accepted); rows keep their line."""
    path = Path(path)
    reader = csv.reader(io.StringIO(read_text(path, "utf-8-sig"), newline=""))
    try:
        header = next(reader, None)
        if header is None:
            raise DataError(
                f"{path}: empty file; the first line must name the columns (e.g. task,prompt,completion)"
            )
        header = [name.strip() for name in header]
        rows, start = [], reader.line_num + 1
        for values in reader:
            if any(v.strip() for v in values):
                if len(values) > len(header):
                    raise DataError(
                        f"{path} line {start}: {len(values)} fields but the header names {len(header)}; "
                        "quote fields that contain commas"
                    )
                rows.append((start, dict(zip(header, values))))
            start = reader.line_num + 1
    except csv.Error as e:
        raise DataError(f"{path} line {reader.line_num}: {e}; check the quoting") from None
    return Table(str(path), rows, columns=tuple(header))


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
