"""badit.data: tasks from SuperNI folders or own data (JSONL, CSV, `datasets`), prompts, tokenisation with
answer-only labels, batching and sampling."""

from badit.data.batches import DataCollator, TaskBalancedSampler
from badit.data.files import DataError
from badit.data.prompts import PAPER_TEMPLATE, PromptParts, PromptTemplate, format_prompt
from badit.data.rows import Columns
from badit.data.sources import (
    FORMATS,
    TaskSource,
    check_data,
    detect_format,
    open_source,
    run_data_check,
    source_from_dataset,
)
from badit.data.tasks import (
    Instance,
    SplitSizes,
    Task,
    download_tasks,
    list_tasks,
    load_task,
    load_tasks,
    task_order,
    write_split_layout,
)
from badit.data.tokenize import IGNORE_INDEX, encode_prompts, tokenize_tasks

__all__ = [
    "FORMATS",
    "Columns",
    "DataCollator",
    "DataError",
    "IGNORE_INDEX",
    "Instance",
    "PAPER_TEMPLATE",
    "PromptParts",
    "PromptTemplate",
    "SplitSizes",
    "Task",
    "TaskBalancedSampler",
    "TaskSource",
    "check_data",
    "detect_format",
    "download_tasks",
    "encode_prompts",
    "format_prompt",
    "list_tasks",
    "load_task",
    "load_tasks",
    "open_source",
    "run_data_check",
    "source_from_dataset",
    "task_order",
    "tokenize_tasks",
    "write_split_layout",
]
