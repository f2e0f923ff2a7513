"""Seeded train/dev/test split of raw `taskNNN_name.json` files (the SuperNI release layout)."""

from __future__ import annotations

import random
from dataclasses import dataclass

from badit.data.files import DataError


@dataclass(frozen=True)
class SplitSizes:
    """Instances per task in each split (defaults: the continual SuperNI benchmark, 1000 train / 100 test).

    `head_test=True` takes the first `test` instances of the file as test data, as Tk-Instruct does for
    SuperNI's evaluation tasks (their first 100 instances are label-balanced); the rest is shuffled.
    """

    train: int = 1000
    dev: int = 0
    test: int = 100
    seed: int = 42
    head_test: bool = False


def split_indices(n: int, task: str, sizes: SplitSizes, source: str = "") -> dict[str, list[int]]:
    """Indices of the instances of a task with `n` instances that go to each split.

    The shuffle is seeded by (seed, task name), so adding or removing other tasks never changes a
    task's split. Test takes its share first, then dev, then train takes up to `sizes.train` of the rest.
    """
    if min(sizes.train, sizes.dev, sizes.test) < 0:
        raise ValueError(f"split sizes must be >= 0, got {sizes}")
    if n <= sizes.test + sizes.dev:
        raise DataError(
            f"{source or task}: {n} instances, but test ({sizes.test}) + dev ({sizes.dev}) leave none "
            "for training; lower the test/dev sizes or drop the task"
        )
    order = list(range(n))
    rng = random.Random(f"{sizes.seed}/{task}")  # str seeds are hashed with SHA-512: stable across runs
    if sizes.head_test:
        head, rest = order[: sizes.test], order[sizes.test :]
        rng.shuffle(rest)
        order = head + rest
    else:
        rng.shuffle(order)
    test = order[: sizes.test]
    dev = order[sizes.test : sizes.test + sizes.dev]
    train = order[sizes.test + sizes.dev :][: sizes.train]
    return {"train": sorted(train), "dev": sorted(dev), "test": sorted(test)}
