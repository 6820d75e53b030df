"""Backend health: passive (what happens to real connection attempts) and active (probes).

A backend whose connection attempts are refused or unanswered ``failures`` times in a row
(unanswered: no reply within ``reply_timeout``) is taken out of rotation for ``quarantine``
seconds, then given another chance. Any success resets its run of failures.

Dataplanes feed it in one of two ways, the seam's abilities (``minuteman.dataplane``):

* ``ReportsOutcomes.drain_outcomes()`` — one (backend, ok) per attempt, in order (NFQUEUE checks
  the conntrack entries of a bounded sample of SYNs per backend ``reply_timeout`` later);
* ``CountsOutcomes.outcome_totals()`` — monotonic (succeeded, failed) totals per backend (the
  eBPF dataplane's per-backend counters); deltas are fed as outcomes, successes first.

Active probing (optional) connects to every backend each ``probe_interval`` and feeds the same
record, so a dead backend with no client traffic is still found and a recovered one returns.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from minuteman.dataplane import Backend, CountsOutcomes, Dataplane, ReportsOutcomes


@dataclass(frozen=True)
class HealthConfig:
    reply_timeout: float = 0.4      # seconds without a reply that count as a failed attempt
    failures: int = 5               # failed attempts in a row that take a backend out
    quarantine: float = 30.0        # seconds a failing backend stays out
    probe_interval: float | None = None   # active TCP probes every N seconds (None: passive only)

    def __post_init__(self) -> None:
        if self.reply_timeout <= 0:
            raise ValueError(f"reply_timeout must be > 0, got {self.reply_timeout}")
        if self.failures < 1:
            raise ValueError(f"failures must be >= 1, got {self.failures}")
        if self.quarantine < 0:
            raise ValueError(f"quarantine must be >= 0, got {self.quarantine}")
        if self.probe_interval is not None and self.probe_interval <= 0:
            raise ValueError(f"probe_interval must be > 0, got {self.probe_interval}")


@dataclass
class _Record:
    in_a_row: int = 0
    out_until: float = 0.0
    succeeded: int = 0
    failed: int = 0


@dataclass
class BackendHealth:
    config: HealthConfig = field(default_factory=HealthConfig)
    clock: Callable[[], float] = time.monotonic
    _records: dict[Backend, _Record] = field(default_factory=dict)
    # The counters' totals last seen per backend. Kept when a backend's record is forgotten:
    # totals never go down, so a backend that comes back at the same address must not have its
    # old attempts fed again (thousands of successes, then its old failures in a row).
    _seen_totals: dict[Backend, tuple[int, int]] = field(default_factory=dict)

    def record(self, backend: Backend, ok: bool, successes: int = 1) -> None:
        """One attempt's outcome (``successes`` of them at once when ``ok``: any resets the run)."""
        rec = self._records.setdefault(backend, _Record())
        if ok:
            rec.succeeded += successes
            rec.in_a_row = 0
            return
        rec.failed += 1
        rec.in_a_row += 1
        if rec.in_a_row >= self.config.failures and not self.is_out(backend):
            rec.out_until = self.clock() + self.config.quarantine
            rec.in_a_row = 0      # after the quarantine it gets a fresh run of attempts

    def observe_totals(self, totals: dict[Backend, tuple[int, int]]) -> None:
        for backend, (succeeded, failed) in totals.items():
            old_ok, old_failed = self._seen_totals.get(backend, (0, 0))
            if (succeeded, failed) == (old_ok, old_failed):
                continue
            self._seen_totals[backend] = (succeeded, failed)
            if succeeded > old_ok:          # successes first
                self.record(backend, True, succeeded - old_ok)
            for _ in range(max(0, failed - old_failed)):
                self.record(backend, False)

    def poll(self, dataplane: Dataplane | ReportsOutcomes | CountsOutcomes) -> None:
        """Take whatever the dataplane reports (either feed, both, or none)."""
        if isinstance(dataplane, ReportsOutcomes):
            for backend, ok in dataplane.drain_outcomes():
                self.record(backend, ok)
        if isinstance(dataplane, CountsOutcomes):
            self.observe_totals(dataplane.outcome_totals())

    def is_out(self, backend: Backend) -> bool:
        rec = self._records.get(backend)
        return rec is not None and rec.out_until > self.clock()

    def out(self, backends: Iterable[Backend] | None = None) -> frozenset[Backend]:
        candidates = self._records if backends is None else backends
        return frozenset(b for b in candidates if self.is_out(b))

    def failed_total(self, backend: Backend) -> int:
        rec = self._records.get(backend)
        return rec.failed if rec else 0

    def forget(self, keep: Iterable[Backend]) -> None:
        """Drop records of backends no VIP has any more."""
        keep = set(keep)
        for backend in [b for b in self._records if b not in keep]:
            del self._records[backend]

    async def probe(self, backends: Iterable[Backend]) -> None:
        """One round of active TCP probes (connect, then close) fed into the record."""
        await asyncio.gather(*(self._probe_one(b) for b in backends))

    async def _probe_one(self, backend: Backend) -> None:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(backend.ip, backend.port),
                                               self.config.reply_timeout)
        except (TimeoutError, OSError):
            self.record(backend, False)
            return
        writer.close()
        self.record(backend, True)
