"""The dataplane seam: a VIP table in, the kernel programmed. Real: eBPF socket LB
(``minuteman/ebpf.py`` on ``bpf/``) and NFQUEUE (``minuteman/nfqueue.py``); fake: ``FakeDataplane``.

The reconciler hands over the whole desired table each time; ``apply`` is idempotent and
touches only the entries that differ. ``current`` reads what the kernel holds (so a restarted
agent adopts it instead of rebuilding). Failures are returned per VIP, never thrown, so one bad
VIP never stops the others.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

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


class FakeDataplane:
    """In-memory dataplane for reconciler tests; ``fail`` makes chosen VIPs fail on apply."""

    name = "fake"

    def __init__(self) -> None:
        self.table: dict[VipKey, VipEntry] = {}
        self.fail: set[VipKey] = set()
        self.applies = 0
        self.writes = 0
        self.counts: dict[tuple[VipKey, Backend], int] = {}

    def apply(self, table: dict[VipKey, VipEntry]) -> ApplyResult:
        self.applies += 1
        result = ApplyResult()
        for key in set(self.table) - set(table):
            del self.table[key]
            self.writes += 1
            result.removed.add(key)
        for key, entry in table.items():
            if key in self.fail:
                result.errors[key] = "injected failure"
                continue
            if self.table.get(key) != entry:
                self.table[key] = entry
                self.writes += 1
            result.programmed.add(key)
        return result

    def current(self) -> dict[VipKey, VipEntry]:
        return dict(self.table)

    def connection_counts(self) -> dict[tuple[VipKey, Backend], int]:
        return dict(self.counts)

    def close(self, keep_kernel_state: bool = True) -> None:
        if not keep_kernel_state:
            self.table.clear()
