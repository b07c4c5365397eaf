"""Side-by-side timing shared by the benchmark scripts: alternate, repeat, take medians."""

from __future__ import annotations

import statistics
import time
from typing import Callable, Sequence


def timed(step: Callable[[], object]) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def alternate(steps: Sequence[Callable[[], object]], repeats: int, warmup: int = 3) -> list[float]:
    """Median seconds per call of each step, running them in turn so drift hits all alike."""
    for _ in range(warmup):
        for step in steps:
            step()
    times: list[list[float]] = [[] for _ in steps]
    for _ in range(repeats):
        for step, samples in zip(steps, times):
            samples.append(timed(step))
    return [statistics.median(t) for t in times]
