"""Length-grouped batches: every example once per epoch (or the balanced draws, regrouped), little
padding, reproducible per (seed, epoch); the Trainer uses them by default and not when switched off."""

from __future__ import annotations

import random

import pytest
from torch.utils.data import RandomSampler
from transformers import TrainingArguments

from badit.data import LengthGroupedSampler, TaskBalancedSampler
from badit.training.trainer import BaditTrainer
from tests.helpers import make_tiny_model


def padded_positions(order: list[int], lengths: list[int], batch: int) -> int:
    """Sum over batches of batch size x the batch's longest example (what right padding computes)."""
    groups = [order[i : i + batch] for i in range(0, len(order), batch)]
    return sum(len(g) * max(lengths[i] for i in g) for g in groups)


def test_one_megabatch_is_sorted_longest_first():
    lengths = [5, 1, 9, 3, 7, 2, 8, 4, 6, 12, 11, 10]
    sampler = LengthGroupedSampler(lengths, group_size=3, seed=0, megabatch_groups=4)  # 4 x 3 = all 12
    order = list(sampler)
    assert sorted(order) == list(range(12))
    assert [lengths[i] for i in order] == [12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1]
    # batches 12,11,10 | 9,8,7 | 6,5,4 | 3,2,1: 3 x (12 + 9 + 6 + 3) = 90 positions for 78 tokens
    assert padded_positions(order, lengths, 3) == 90 and sum(lengths) == 78


def test_grouping_cuts_padding_against_shuffling():
    rng = random.Random(0)
    lengths = [rng.randint(20, 1000) for _ in range(800)]
    order = list(LengthGroupedSampler(lengths, group_size=8, seed=1))  # megabatches of 50 x 8 = 400
    shuffled = list(range(800))
    rng.shuffle(shuffled)
    real = sum(lengths)
    grouped_ratio = padded_positions(order, lengths, 8) / real
    shuffled_ratio = padded_positions(shuffled, lengths, 8) / real
    # uniform lengths 20-1000: a random batch of 8 pads to about the max of 8 draws, 7/9 of the range
    # (~ 782 of a mean 510: ~1.5x); sorted groups of 8 among 400 differ by ~ 980 / 50 per group
    assert shuffled_ratio > 1.4 and grouped_ratio < 1.05, (shuffled_ratio, grouped_ratio)


def test_balanced_draws_are_regrouped_not_changed_and_epochs_are_reproducible():
    task_ids = [0] * 30 + [1] * 10
    lengths = [10 + i for i in range(40)]
    base = TaskBalancedSampler(task_ids, temperature=5.0, seed=3)
    sampler = LengthGroupedSampler(lengths, group_size=4, seed=3, base=base)
    sampler.set_epoch(2)
    order = list(sampler)
    base.set_epoch(2)
    assert sorted(order) == sorted(base)  # the same multiset of draws: the task mix is the sampler's
    assert list(sampler) == order  # a function of (seed, epoch)
    sampler.set_epoch(3)
    assert list(sampler) != order
    assert len(sampler) == len(base) == 40


def test_group_size_is_checked():
    with pytest.raises(ValueError, match="group_size must be >= 1"):
        LengthGroupedSampler([1, 2], group_size=0)


@pytest.mark.parametrize(
    ("group_by_length", "balanced", "strategy", "expected"),
    [
        (True, False, "random", LengthGroupedSampler),
        (True, True, "random", LengthGroupedSampler),
        (False, True, "random", TaskBalancedSampler),
        (False, False, "random", RandomSampler),
        (True, False, "sequential", "SequentialSampler"),  # a sampler the user chose wins
    ],
)
def test_trainer_sampler(tmp_path, group_by_length, balanced, strategy, expected):
    data = [{"input_ids": [1] * (n + 1), "labels": [1] * (n + 1), "task_id": n % 2} for n in range(8)]
    args = TrainingArguments(
        str(tmp_path),
        use_cpu=True,
        report_to="none",
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        train_sampling_strategy=strategy,
    )
    trainer = BaditTrainer(
        model=make_tiny_model(),
        args=args,
        train_dataset=data,
        group_by_length=group_by_length,
        balanced_sampling=balanced,
    )
    sampler = trainer._get_train_sampler()
    name = type(sampler).__name__
    assert name == (expected if isinstance(expected, str) else expected.__name__)
    if isinstance(sampler, LengthGroupedSampler):
        assert sampler.group_size == 4  # batch 2 x accumulation 2: one optimizer step
        assert isinstance(sampler.base, TaskBalancedSampler) == balanced
