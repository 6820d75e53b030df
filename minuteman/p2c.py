"""Power-of-two-choices least-connections (Mitzenmacher): sample two distinct backends at random and
take the one with fewer open connections. Nearly as even as full least-connections, with O(1)
work per new flow and no herd onto one "least loaded" backend when many choosers race.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence

from minuteman.dataplane import Backend


def p2c_choose(backends: Sequence[Backend], load: Callable[[Backend], int],
               rng: random.Random | None = None) -> Backend | None:
    """The less loaded of two random distinct backends (ties: the first sampled); None if empty."""
    if not backends:
        return None
    if len(backends) == 1:
        return backends[0]
    first, second = (rng or random).sample(range(len(backends)), 2)
    a, b = backends[first], backends[second]
    return b if load(b) < load(a) else a


class OpenConnections:
    """Open-connection counts per backend, kept by whoever sees flows start and end."""

    def __init__(self) -> None:
        self._open: Counter[Backend] = Counter()

    def opened(self, backend: Backend) -> None:
        self._open[backend] += 1

    def closed(self, backend: Backend) -> None:
        if self._open[backend] > 0:
            self._open[backend] -= 1

    def __call__(self, backend: Backend) -> int:
        return self._open[backend]
