"""The dataplane seam: a VIP table in, the kernel programmed. Real: eBPF socket LB
(``minuteman/ebpf.py`` on ``bpf/``), NFQUEUE (``minuteman/nfqueue.py``) and both at once
(``minuteman/layered.py``); fake: ``minuteman/dataplane_fake.py``.

The reconciler hands over the whole desired table each time; ``apply`` is idempotent and
touches only the entries that differ. ``current`` reads what the kernel holds (so a restarted
agent adopts it instead of rebuilding). Failures are returned per VIP, never thrown, so one bad
VIP never stops the others.

Beyond ``Dataplane``, a dataplane may have optional abilities, each a small Protocol below that the
reconciler and health check with ``isinstance``: ``Startable`` (packet handling to start on the
agent's loop), ``Maintained`` (periodic care on that loop), ``ReportsOutcomes`` and
``CountsOutcomes`` (the two feeds of passive backend health).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

Protocol_ = Literal["tcp", "udp"]


@dataclass(frozen=True, order=True)
class Backend:
    ip: str
    port: int


@dataclass(frozen=True, order=True)
class VipKey:
    address: str          # "11.0.0.3" (named) or any address VIP
    port: int
    protocol: Protocol_


@dataclass(frozen=True)
class VipEntry:
    key: VipKey
    # Backends that may take new connections, in Maglev-table order: ``lookup`` holds indices
    # into ``backends`` (length = the Maglev table size, a prime) so every dataplane picks
    # the same backend for the same flow hash.
    backends: tuple[Backend, ...]
    lookup: tuple[int, ...] = ()
    # Backends that must keep their established flows but take no new ones (TASK_KILLING).
    draining: tuple[Backend, ...] = ()


@dataclass
class ApplyResult:
    programmed: set[VipKey] = field(default_factory=set)
    removed: set[VipKey] = field(default_factory=set)
    errors: dict[VipKey, str] = field(default_factory=dict)


class Dataplane(Protocol):
    name: str

    def apply(self, table: dict[VipKey, VipEntry]) -> ApplyResult:
        """Make the kernel hold exactly ``table``. Idempotent; errors per VIP in the result."""

    def current(self) -> dict[VipKey, VipEntry]:
        """What the kernel holds now (adopted on start-up)."""

    def connection_counts(self) -> dict[tuple[VipKey, Backend], int]:
        """New connections sent to each backend since the table was first programmed."""

    def close(self, keep_kernel_state: bool = True) -> None:
        """Stop; by default leave the kernel state serving (a restart adopts it)."""


@runtime_checkable
class Startable(Protocol):
    """Has packet handling to start before it serves (NFQUEUE's queue workers)."""

    async def start(self) -> None:
        """Start on the agent's loop; idempotent. Returns once packets are being handled."""


@runtime_checkable
class Maintained(Protocol):
    """Wants periodic care on the agent's loop, every health poll (NFQUEUE replaces dead workers)."""

    def maintain(self) -> None:
        """Quick and non-blocking; an exception is logged by the caller, never fatal."""


@runtime_checkable
class ReportsOutcomes(Protocol):
    """Reports connection attempts one by one (NFQUEUE checks sampled flows in conntrack)."""

    def drain_outcomes(self) -> list[tuple[Backend, bool]]:
        """(backend, answered) per attempt since the last call, in order."""


@runtime_checkable
class CountsOutcomes(Protocol):
    """Counts connection outcomes per backend (the eBPF dataplane's counters)."""

    def outcome_totals(self) -> dict[Backend, tuple[int, int]]:
        """Monotonic (succeeded, failed) totals per backend."""
