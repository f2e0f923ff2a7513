"""badit.data: tasks from SuperNI folders or own data (JSONL, CSV, `datasets`), prompts, tokenisation with
answer-only labels, batching and sampling.

Names are loaded on first use (PEP 562 `__getattr__`, as `badit` itself), so that reading and checking
data (`badit.data.files`, `.tasks`, `.rows`, `.sources`) never imports torch; only `badit.data.batches`
does.
"""

from __future__ import annotations

from badit.lazy import lazy_exports

_EXPORTS = {
    "DataCollator": "batches",
    "LengthGroupedSampler": "batches",
    "TaskBalancedSampler": "batches",
    "DataError": "files",
    "PAPER_TEMPLATE": "prompts",
    "PromptParts": "prompts",
    "PromptTemplate": "prompts",
    "format_prompt": "prompts",
    "Columns": "rows",
    "FORMATS": "sources",
    "TaskSource": "sources",
    "check_data": "sources",
    "detect_format": "sources",
    "open_source": "sources",
    "run_data_check": "sources",
    "source_from_dataset": "sources",
    "Instance": "tasks",
    "SplitSizes": "tasks",
    "Task": "tasks",
    "download_tasks": "tasks",
    "list_tasks": "tasks",
    "load_task": "tasks",
    "load_tasks": "tasks",
    "task_order": "tasks",
    "write_split_layout": "tasks",
    "IGNORE_INDEX": "tokenize",
    "encode_prompts": "tokenize",
    "tokenize_tasks": "tokenize",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
