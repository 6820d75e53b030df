"""The seam to a replay table outside the resolver's process: own-zone answers given by the
kernel before a query reaches the socket (``bpf/dns_replay.py``), or by a fake in tests.

```
QueryServer._remember(own-zone reply, one rotation) ──put(query tail, reply tail, stat id)──► offload
QueryServer.forget() (zones changed)               ──forget()──────────────────────────────► offload
DnsService, every second ──heartbeat(); hits() ──► stats.requests[(zone, type, rcode, "kernel")]
```

Only answers valid until the zones change go there: cached forwarded answers count their TTLs
down and rotated answers change order, which the resolver does itself. Client filtering is the
offload's too (``clients``): a query it may not answer reaches the resolver, which drops it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol


class ReplayOffload(Protocol):
    def attach(self, interfaces: Iterable[str]) -> None:
        """Starts answering queries that arrive on these interfaces."""

    def listen(self, addresses: Iterable[tuple[str, int]]) -> None:
        """The resolver's UDP (address, port)s: queries to anything else pass by."""

    def clients(self, networks: Iterable[str]) -> None:
        """Source networks it may answer (the resolver's ``ClientFilter``)."""

    def put(self, query_tail: bytes, reply_tail: bytes, stat: int) -> bool:
        """Answer ``query_tail`` (bytes after the ID) with ``reply_tail``; False: too big, not stored."""

    def forget(self) -> None:
        """Every stored answer stops answering (the zones changed)."""

    def heartbeat(self) -> None:
        """The resolver is alive: keep answering for a few more seconds."""

    def hits(self) -> dict[int, int]:
        """Answers given so far, by stat id (totals since start)."""

    def close(self) -> None:
        """Stops answering and detaches."""


class FakeReplayOffload:
    """In-memory stand-in: ``answer`` plays what the kernel would do with a query."""

    def __init__(self, key_max: int = 252, reply_max: int = 1024) -> None:
        self.key_max, self.reply_max = key_max, reply_max
        self.entries: dict[bytes, tuple[bytes, int, int]] = {}     # query tail → reply tail, stat, generation
        self.generation = 1
        self.interfaces: list[str] = []
        self.addresses: list[tuple[str, int]] = []
        self.networks: list[str] = []
        self.counts: dict[int, int] = {}
        self.heartbeats = 0
        self.closed = False

    def attach(self, interfaces: Iterable[str]) -> None:
        self.interfaces += list(interfaces)

    def listen(self, addresses: Iterable[tuple[str, int]]) -> None:
        self.addresses = list(addresses)

    def clients(self, networks: Iterable[str]) -> None:
        self.networks = list(networks)

    def put(self, query_tail: bytes, reply_tail: bytes, stat: int) -> bool:
        if len(query_tail) > self.key_max or len(reply_tail) > self.reply_max:
            return False
        self.entries[query_tail] = (reply_tail, stat, self.generation)
        return True

    def forget(self) -> None:
        self.generation += 1

    def heartbeat(self) -> None:
        self.heartbeats += 1

    def hits(self) -> dict[int, int]:
        return dict(self.counts)

    def close(self) -> None:
        self.closed = True

    def answer(self, query: bytes) -> bytes | None:
        """The reply the kernel would send for ``query``, or None (it would pass it on)."""
        found = self.entries.get(query[2:])
        if found is None or found[2] != self.generation or self.closed:
            return None
        self.counts[found[1]] = self.counts.get(found[1], 0) + 1
        return query[:2] + found[0]
