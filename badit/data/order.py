"""Task order for the continual setting: sorted by name, then a seeded shuffle or an explicit list.
Never file-system order, so a run is reproducible on any machine."""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence


def task_order(
    names: Iterable[str], seed: int | None = None, order: Sequence[str] | None = None
) -> list[str]:
    """The order in which tasks are learnt.

    - `order` given: exactly that list (each name must be known, no repeats; a subset is allowed);
    - else `seed` given: the sorted names shuffled with `random.Random(seed)`;
    - else: sorted by name.
    """
    known = sorted(set(names))
    if order is not None:
        order = list(order)
        unknown = [n for n in order if n not in known]
        repeated = sorted({n for n in order if order.count(n) > 1})
        if unknown or repeated:
            raise ValueError(
                f"task order: unknown tasks {unknown}, repeated {repeated}; known tasks are {known}"
            )
        return order
    if seed is not None:
        random.Random(seed).shuffle(known)
    return known
