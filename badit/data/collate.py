"""Padding of tokenised examples into batches.

Written here rather than using `transformers.DataCollatorForSeq2Seq` because we need the padding side
fixed by the caller (right for training, left for generation) independently of the tokenizer's own
`padding_side`, and an integer `task_ids` tensor carried alongside.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence

from badit.data.tokenize import IGNORE_INDEX


def pad(
    seqs: list[list[int]],
    value: int,
    side: Literal["left", "right"] = "right",
    multiple_of: int | None = None,
) -> torch.Tensor:
    """(batch, length) LongTensor of `seqs` padded with `value` on `side`; length = the longest sequence,
    rounded up to a multiple of `multiple_of` when given."""
    out = pad_sequence([torch.tensor(s, dtype=torch.long) for s in seqs], True, value, side)
    extra = -out.shape[1] % multiple_of if multiple_of else 0
    return F.pad(out, (extra, 0) if side == "left" else (0, extra), value=value)


@dataclass
class DataCollator:
    """Batches examples {input_ids, labels?, task_id?} into input_ids, attention_mask, labels (-100 on
    prompt and padding) and task_ids. Right padding for training; pass `padding_side="left"` for
    generation. `pad_to_multiple_of` rounds the length up (tensor-core friendly shapes)."""

    pad_token_id: int
    padding_side: Literal["left", "right"] = "right"
    pad_to_multiple_of: int | None = None

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        side, multiple = self.padding_side, self.pad_to_multiple_of
        ids = [e["input_ids"] for e in examples]
        batch = {
            "input_ids": pad(ids, self.pad_token_id, side, multiple),
            "attention_mask": pad([[1] * len(s) for s in ids], 0, side, multiple),
        }
        if "labels" in examples[0]:
            batch["labels"] = pad([e["labels"] for e in examples], IGNORE_INDEX, side, multiple)
        if "task_id" in examples[0]:
            batch["task_ids"] = torch.tensor([e["task_id"] for e in examples], dtype=torch.long)
        return batch
