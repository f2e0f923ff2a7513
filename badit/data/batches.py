"""Batches: padding of tokenised examples (`DataCollator`) and task-balanced sampling.

Padding: written here rather than using `transformers.DataCollatorForSeq2Seq` because we need the padding side
fixed by the caller (right for training, left for generation) independently of the tokenizer's own
`padding_side`, and an integer `task_ids` tensor carried alongside.

Sampling: temperature-based task balance (as in multilingual / multi-task training, e.g. T5, mT5).

Task t with n_t examples is drawn with probability p_t = n_t^(1/T) / sum_s n_s^(1/T), then an example
uniformly within the task. T = 1 is proportional sampling (every example equally likely, as plain
shuffling); large T approaches uniform over tasks, lifting small tasks.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import Sampler

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


def task_probabilities(task_ids: torch.Tensor, temperature: float) -> torch.Tensor:
    """p_t for t = 0..max(task_ids): n_t^(1/T), normalised (0 for ids without examples)."""
    counts = torch.bincount(task_ids).double()
    weights = counts ** (1.0 / temperature)
    return weights / weights.sum()


class TaskBalancedSampler(Sampler[int]):
    """Yields `num_samples` dataset indices per epoch (with replacement) drawn by temperature sampling.

    `task_ids[i]` is the task of example i. Call `set_epoch(e)` to draw a fresh, reproducible order
    per epoch (seeded by seed + epoch). Batches mix tasks.
    """

    def __init__(
        self, task_ids: Sequence[int], temperature: float = 1.0, num_samples: int | None = None, seed: int = 0
    ):
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.task_ids = torch.as_tensor(list(task_ids), dtype=torch.long)
        if self.task_ids.numel() == 0:
            raise ValueError("TaskBalancedSampler needs at least one example")
        self.temperature = temperature
        self.num_samples = num_samples if num_samples is not None else len(self.task_ids)
        self.seed = seed
        self.epoch = 0
        counts = torch.bincount(self.task_ids).double()
        # probability of example i = p_{t(i)} / n_{t(i)}
        self.example_weights = (task_probabilities(self.task_ids, temperature) / counts.clamp(min=1))[
            self.task_ids
        ]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        draws = torch.multinomial(
            self.example_weights, self.num_samples, replacement=True, generator=generator
        )
        return iter(draws.tolist())
