"""Named-VIP addresses: one address from the named-VIP pool per name, allocated once by the master.

A named VIP (``cluster.vip_labels.named_vip``) ``marathon:/name`` gets an address that every
agent sees the same (it travels in the cluster view) and that survives master restarts (the
caller persists ``allocations``). When no app uses a name anymore its address is freed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from cluster.addresses import NAMED_VIP_POOL


class VipAllocator:
    """Pure: ``sync(names)`` allocates what is new and frees what is gone; idempotent."""

    def __init__(self, allocations: dict[str, str] | None = None, framework: str = "marathon",
                 pool: ipaddress.IPv4Network = NAMED_VIP_POOL, next_address: str | None = None) -> None:
        self.framework = framework
        self.pool = pool
        self.allocations: dict[str, str] = dict(allocations or {})
        self._next = int(ipaddress.IPv4Address(next_address)) if next_address else int(pool.network_address) + 1
        self._used = {int(ipaddress.IPv4Address(a)) for a in self.allocations.values()}

    @property
    def next_address(self) -> str:
        """Where the next search starts (persist it with the allocations)."""
        return str(ipaddress.IPv4Address(self._next))

    def key(self, name: str) -> str:
        return f"{self.framework}:{name}"

    def sync(self, names: Iterable[str]) -> bool:
        """Makes the allocations exactly ``names``; returns True when something changed."""
        wanted = {self.key(n) for n in names}
        changed = False
        for key in list(self.allocations):
            if key not in wanted:
                self._used.discard(int(ipaddress.IPv4Address(self.allocations.pop(key))))
                changed = True
        for key in sorted(wanted - set(self.allocations)):
            self.allocations[key] = self._allocate()
            changed = True
        return changed

    def _allocate(self) -> str:
        used = self._used
        first, last = int(self.pool.network_address) + 1, int(self.pool.broadcast_address) - 1
        candidate = self._next
        for _ in range(last - first + 1):
            if candidate > last:
                candidate = first
            if candidate not in used:
                # Round-robin rather than lowest-free, so a freed address is not handed to a new
                # name while agents may still hold the old mapping.
                self._next = candidate + 1
                used.add(candidate)
                return str(ipaddress.IPv4Address(candidate))
            candidate += 1
        raise RuntimeError(f"named VIP pool {self.pool} is exhausted")
