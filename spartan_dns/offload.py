"""The seam to a replay table outside the resolver's process: own-zone answers given by the
kernel before a query reaches the socket (``bpf/dns_replay.py``), or by a fake in tests.

```
QueryServer._remember(own-zone reply, one rotation) ──put(query tail, reply tail, stat id)──► offload
QueryServer.forget() (zones changed)               ──forget()──────────────────────────────► offload
DnsService, every second ──heartbeat(); hits(n) ──► stats.requests[(zone, type, rcode, "kernel")]
```

Own-zone answers go there (valid until the zones change), and cached forwarded answers with a
``Countdown``: where their TTLs sit and when they were whole, so the offload writes them counted
down by whole seconds until the answer expires, as the resolver would. Rotated answers change
order on every reply and stay with the resolver. Client filtering is the
offload's too (``clients``): a query it may not answer reaches the resolver, which drops it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Countdown:
    """A cached answer's TTLs: (offset in the DNS message, TTL at ``origin``) each; they lose a
    second per whole second since ``origin`` (monotonic seconds); the answer ends at ``until``."""
    ttls: tuple[tuple[int, int], ...]
    origin: float
    until: float

    def patched(self, reply: bytes, now: float) -> bytes:
        age = int(now - self.origin)
        out = bytearray(reply)
        for offset, ttl in self.ttls:
            out[offset:offset + 4] = max(0, ttl - age).to_bytes(4, "big")
        return bytes(out)


class ReplayOffload(Protocol):
    def attach(self, interfaces: Iterable[str]) -> None:
        """Starts answering queries that arrive on these interfaces."""

    def listen(self, addresses: Iterable[tuple[str, int]]) -> None:
        """The resolver's UDP (address, port)s: queries to anything else pass by."""

    def clients(self, networks: Iterable[str]) -> None:
        """Source networks it may answer (the resolver's ``ClientFilter``)."""

    def put(self, query_tail: bytes, reply_tail: bytes, stat: int, countdown: Countdown | None = None) -> bool:
        """Answer ``query_tail`` (bytes after the ID) with ``reply_tail``; False: too big, not stored."""

    def forget(self) -> None:
        """Every stored answer stops answering (the zones changed)."""

    def heartbeat(self) -> None:
        """The resolver is alive: keep answering for a few more seconds."""

    def hits(self, stats: int) -> dict[int, int]:
        """Answers given so far, by stat id below ``stats`` (totals since start)."""

    def close(self) -> None:
        """Stops answering and detaches."""


class FakeReplayOffload:
    """In-memory stand-in: ``answer`` plays what the kernel would do with a query."""

    def __init__(self, key_max: int = 252, reply_max: int = 1024) -> None:
        self.key_max, self.reply_max = key_max, reply_max
        # query tail → reply tail, stat, generation, countdown
        self.entries: dict[bytes, tuple[bytes, int, int, Countdown | None]] = {}
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

    def put(self, query_tail: bytes, reply_tail: bytes, stat: int, countdown: Countdown | None = None) -> bool:
        if len(query_tail) > self.key_max or len(reply_tail) > self.reply_max:
            return False
        self.entries[query_tail] = (reply_tail, stat, self.generation, countdown)
        return True

    def forget(self) -> None:
        self.generation += 1

    def heartbeat(self) -> None:
        self.heartbeats += 1

    def hits(self, stats: int) -> dict[int, int]:
        return {stat: total for stat, total in self.counts.items() if stat < stats}

    def close(self) -> None:
        self.closed = True

    def answer(self, query: bytes, now: float = 0.0) -> bytes | None:
        """The reply the kernel would send for ``query`` at ``now`` (monotonic), or None (it
        would pass it on)."""
        found = self.entries.get(query[2:])
        if found is None or found[2] != self.generation or self.closed:
            return None
        reply, stat, _generation, countdown = found
        if countdown is not None:
            if now >= countdown.until:
                return None
            reply = countdown.patched(b"\0\0" + reply, now)[2:]
        self.counts[stat] = self.counts.get(stat, 0) + 1
        return query[:2] + reply
