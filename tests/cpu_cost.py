"""Bounded work measured as a ratio, never against the wall clock.

A hostile input must cost no more than a few readings of a real input of its kind. Both are measured in
this process's CPU seconds in the same run, so neither a slow machine nor another process's load can
fail the comparison (a wall-clock bound did, on a loaded 2-core machine), while a reader that loops,
inflates or allocates without bound still does.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class Spent:
    """CPU seconds of this process, filled in when the ``with`` block ends (raised or not)."""

    seconds: float = 0.0


@contextmanager
def cpu() -> Iterator[Spent]:
    """CPU seconds of the block, the garbage collector paused: a collection's cost follows the whole
    test session's heap, not the work measured."""
    spent, collecting = Spent(), gc.isenabled()
    gc.disable()
    started = time.process_time()
    try:
        yield spent
    finally:
        spent.seconds = time.process_time() - started
        if collecting:
            gc.enable()


def cheapest(call: Callable[[], object], repeat: int = 3) -> float:
    """The least CPU seconds of ``repeat`` calls: the reference cost, warm (a first call may import)."""
    best = float("inf")
    for _ in range(repeat):
        with cpu() as spent:
            call()
        best = min(best, spent.seconds)
    return best
