"""Temperature-based task-balanced sampling (as in multilingual / multi-task training, e.g. T5, mT5).

Task t with n_t examples is drawn with probability p_t = n_t^(1/T) / sum_s n_s^(1/T), then an example
uniformly within the task. T = 1 is proportional sampling (every example equally likely, as plain
shuffling); large T approaches uniform over tasks, lifting small tasks.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


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
