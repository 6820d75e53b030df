"""Cache of forwarded answers, keyed by question (name, type, class).

TTLs are honoured and counted down: an answer stored with TTL 300 is served 10 s later with TTL
290. Negative answers (NXDOMAIN, NODATA) live at most ``negative_ttl`` seconds. An expired answer is
kept ``max_stale`` more seconds so it can be served stale (RFC 8767, TTL 30) when every upstream
fails; after such a failure the question is not retried for ``failure_recheck`` seconds and the
stale answer is served at once.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

from dnslib import QTYPE, RR, DNSRecord

from spartan_dns.message import NOERROR, NXDOMAIN, TYPE_OPT

CacheKey = tuple[str, int, int]      # (lowercase name without trailing dot, qtype, qclass)

STALE_ANSWER_TTL = 30                # RFC 8767 §4


@dataclass(slots=True)
class CachedAnswer:
    rcode: int
    answers: list[RR]
    authority: list[RR]
    additional: list[RR]
    stored_at: float
    ttl: int
    retry_after: float = 0.0         # serve stale without asking upstream until then

    @property
    def expires(self) -> float:
        return self.stored_at + self.ttl

    def sections(self, now: float, stale: bool = False) -> tuple[list[RR], list[RR], list[RR]]:
        """Copies of the sections with TTLs counted down (or set to the stale TTL)."""
        elapsed = int(now - self.stored_at)

        def age(rrs: list[RR]) -> list[RR]:
            out = []
            for rr in rrs:
                ttl = STALE_ANSWER_TTL if stale else max(0, rr.ttl - elapsed)
                out.append(RR(rr.rname, rr.rtype, rr.rclass, ttl, rr.rdata))
            return out

        return age(self.answers), age(self.authority), age(self.additional)

    def next_tick(self, now: float) -> float:
        """When the counted-down TTLs change next (or the answer expires, whichever is first)."""
        return min(self.stored_at + math.floor(now - self.stored_at) + 1, self.expires)


class ResponseCache:
    """A bounded LRU of upstream answers. Not thread-safe: one asyncio loop owns it."""

    def __init__(self, max_entries: int = 10_000, negative_ttl: int = 5, max_ttl: int = 86_400,
                 max_stale: float = 86_400, failure_recheck: float = 30.0):
        if max_entries < 1:
            raise ValueError("cache max_entries must be at least 1")
        self.max_entries = max_entries
        self.negative_ttl = negative_ttl
        self.max_ttl = max_ttl
        self.max_stale = max_stale
        self.failure_recheck = failure_recheck
        self._entries: OrderedDict[CacheKey, CachedAnswer] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()

    def fresh(self, key: CacheKey, now: float) -> CachedAnswer | None:
        entry = self._entries.get(key)
        if entry is None or now >= entry.expires:
            return None
        self._entries.move_to_end(key)
        return entry

    def stale(self, key: CacheKey, now: float) -> CachedAnswer | None:
        """An expired answer still within ``max_stale``, or None."""
        entry = self._entries.get(key)
        if entry is None or now >= entry.expires + self.max_stale:
            return None
        return entry

    def put(self, key: CacheKey, response: DNSRecord, now: float) -> CachedAnswer | None:
        """Stores an upstream answer if it may be cached; returns the stored entry."""
        rcode = response.header.rcode
        if rcode not in (NOERROR, NXDOMAIN) or response.header.tc:
            return None
        additional = [rr for rr in response.ar if rr.rtype != TYPE_OPT]
        ttl = self._ttl(rcode, response)
        if ttl <= 0:
            return None
        entry = CachedAnswer(rcode, list(response.rr), list(response.auth), additional, now, ttl)
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return entry

    def _ttl(self, rcode: int, response: DNSRecord) -> int:
        if rcode == NOERROR and response.rr:
            return min(min(rr.ttl for rr in response.rr + response.auth), self.max_ttl)
        # Negative: the SOA's TTL bounded by its MINIMUM (RFC 2308 §5), capped by our own limit.
        soa = [rr for rr in response.auth if rr.rtype == QTYPE.SOA]
        if soa:
            ttl = min(soa[0].ttl, soa[0].rdata.times[4])
            return min(ttl, self.negative_ttl)
        return self.negative_ttl
