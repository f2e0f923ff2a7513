"""Batches: padding of tokenised examples (`DataCollator`), task-balanced sampling and length grouping.

Padding: written here rather than using `transformers.DataCollatorForSeq2Seq` because we need the padding side
fixed by the caller (right for training, left for generation) independently of the tokenizer's own
`padding_side`, and an integer `task_ids` tensor carried alongside.

Sampling: temperature-based task balance (as in multilingual / multi-task training, e.g. T5, mT5).

Task t with n_t examples is drawn with probability p_t = n_t^(1/T) / sum_s n_s^(1/T), then an example
uniformly within the task. T = 1 is proportional sampling (every example equally likely, as plain
shuffling); large T approaches uniform over tasks, lifting small tasks.

Length grouping (`LengthGroupedSampler`): batches of similar lengths, so that padding costs little
(on SuperNI at batch 8, random batches compute 2.7x the real tokens; docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import Sampler
from transformers.trainer_pt_utils import get_length_grouped_indices

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


class LengthGroupedSampler(Sampler[int]):
    """Batches of similar lengths: the indices of `base` (each epoch's draws of a sampler such as
    `TaskBalancedSampler`), or a seeded permutation of every example when `base` is None, reordered by
    transformers' `get_length_grouped_indices`: split into megabatches of 50 groups of `group_size`
    (`megabatch_groups`; default 50, fewer for small sets), each sorted by length, the longest group first (an out-of-memory error
    then comes at step 1). Each run of `group_size` consecutive indices is one optimizer step's examples.

    The same idea as transformers' `LengthGroupedSampler` (the Trainer's `group_by_length`), kept as a
    wrapper so that it composes with task-balanced draws (the task mix of an epoch is the base's; a
    batch's mix follows the lengths) and so that each epoch's order is a function of (seed, epoch)
    (`set_epoch`, as `TaskBalancedSampler`), which a resumed run reproduces.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        group_size: int,
        seed: int = 0,
        base: Sampler[int] | None = None,
        megabatch_groups: int | None = None,
    ):
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        self.lengths = list(lengths)
        self.group_size = group_size
        self.seed = seed
        self.base = base
        self.megabatch_groups = megabatch_groups
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if self.base is not None and hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.base) if self.base is not None else len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        indices = list(self.base) if self.base is not None else list(range(len(self.lengths)))
        if not indices:
            return iter([])
        # a stream of its own (seed + epoch, offset from the base's seed + epoch) for the permutation
        generator = torch.Generator().manual_seed(self.seed + self.epoch + 1_000_003)
        lengths = [self.lengths[i] for i in indices]
        order = get_length_grouped_indices(lengths, self.group_size, self.megabatch_groups, generator)
        return iter([indices[j] for j in order])
