"""Seeded train/dev/test split of tasks that come without one: raw `taskNNN_name.json` files (the
SuperNI release layout) and own-data rows without a split column."""

from __future__ import annotations

import random
from dataclasses import dataclass

from badit.data.files import DataError

OWN_DATA_TEST_FRACTION = 0.1
"""Own data (JSONL, CSV, datasets) without a split: 10% of each task's examples are held out for
testing (at least one), the usual share when nothing else is known about the data."""


def _check_size(name: str, value: int | float | None) -> None:
    if value is None and name == "train":
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"split size {name} must be a count >= 0 or a fraction in (0, 1), got {value!r}")
    if isinstance(value, float) and value >= 1 and not value.is_integer():
        raise ValueError(
            f"split size {name}={value}: give a count (e.g. 20) or a fraction below 1 (e.g. 0.1)"
        )


@dataclass(frozen=True)
class SplitSizes:
    """Instances per task in each split (defaults: the continual SuperNI benchmark, 1000 train / 100 test).

    `dev` and `test` are counts, or fractions of the task's instances when given as a float in (0, 1)
    (rounded, at least 1). `train=None` keeps every instance left after test and dev.
    `head_test=True` takes the first `test` instances of the file as test data, as Tk-Instruct does for
    SuperNI's evaluation tasks (their first 100 instances are label-balanced); the rest is shuffled.
    """

    train: int | None = 1000
    dev: int | float = 0
    test: int | float = 100
    seed: int = 42
    head_test: bool = False

    def __post_init__(self):
        for name in ("train", "dev", "test"):
            _check_size(name, getattr(self, name))

    def count(self, split: str, n: int) -> int:
        """How many of a task's `n` instances go to `split` ("dev" or "test")."""
        value = getattr(self, split)
        if isinstance(value, float) and 0 < value < 1:
            return max(1, round(value * n))
        return int(value)


OWN_DATA_SIZES = SplitSizes(train=None, dev=0, test=OWN_DATA_TEST_FRACTION)


def split_indices(n: int, task: str, sizes: SplitSizes, source: str = "") -> dict[str, list[int]]:
    """Indices of the instances of a task with `n` instances that go to each split.

    The shuffle is seeded by (seed, task name), so adding or removing other tasks never changes a
    task's split. Test takes its share first, then dev, then train takes up to `sizes.train` of the rest.
    """
    n_test, n_dev = sizes.count("test", n), sizes.count("dev", n)
    if n <= n_test + n_dev:
        raise DataError(
            f"{source or task}: {n} instances, but test ({n_test}) + dev ({n_dev}) leave none "
            "for training; lower the test/dev sizes (data.split_sizes), add examples or drop the task"
        )
    order = list(range(n))
    rng = random.Random(f"{sizes.seed}/{task}")  # str seeds are hashed with SHA-512: stable across runs
    if sizes.head_test:
        head, rest = order[:n_test], order[n_test:]
        rng.shuffle(rest)
        order = head + rest
    else:
        rng.shuffle(order)
    test = order[:n_test]
    dev = order[n_test : n_test + n_dev]
    train = order[n_test + n_dev :][: sizes.train]
    return {"train": sorted(train), "dev": sorted(dev), "test": sorted(test)}
