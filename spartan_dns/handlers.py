"""The resolver as a chain of small handlers (CoreDNS style).

Each handler looks at a :class:`Request` and either answers (a :class:`Reply`, or an awaitable of
one when it has to wait for the network) or passes (None) to the next::

    Guard ──► LocalZones ──► Forward (cache ──miss──► upstream race ──► cache)

Only ``Forward`` ever waits; everything answered from memory stays synchronous, so the server
creates no task for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol

from dnslib import QTYPE, DNSLabel

from spartan_dns.cache import CachedAnswer, CacheKey, ResponseCache
from spartan_dns.message import (
    BADVERS,
    CLASS_ANY,
    CLASS_IN,
    FORMERR,
    NOTIMP,
    REFUSED,
    SERVFAIL,
    Reply,
    Request,
)
from spartan_dns.stats import DnsStats
from spartan_dns.upstream import Forwarder, Upstream, UpstreamFailure
from spartan_dns.zones import ZoneTable

log = logging.getLogger("navstar.dns")

Result = Reply | Awaitable[Reply] | None


class Handler(Protocol):
    name: str

    def handle(self, request: Request) -> Result: ...


class Chain:
    def __init__(self, handlers: Iterable[Handler]):
        self.handlers = list(handlers)

    def resolve(self, request: Request) -> Reply | Awaitable[Reply]:
        for handler in self.handlers:
            result = handler.handle(request)
            if result is not None:
                return result
        return Reply(REFUSED, source="error")      # nobody serves this name


class Guard:
    """Refuses what no later handler should see: other classes, zone transfers, EDNS versions > 0."""

    name = "guard"

    def handle(self, request: Request) -> Reply | None:
        if request.edns_version > 0:
            return Reply(BADVERS, source="error")         # RFC 6891 §6.1.3
        if request.qclass not in (CLASS_IN, CLASS_ANY):
            return Reply(NOTIMP, source="error")
        qtype = request.qtype
        if qtype in (QTYPE.AXFR, QTYPE.IXFR):
            return Reply(REFUSED, source="error")         # RFC 5936: transfers are not permitted
        if qtype == QTYPE.OPT or (128 <= qtype < 255):
            return Reply(FORMERR if qtype == QTYPE.OPT else NOTIMP, source="error")   # meta types
        return None


class LocalZones:
    """Answers authoritatively for the node's zones, unless a forward zone is as specific or more."""

    name = "zones"

    def __init__(self, table: ZoneTable, forward_zones: Iterable[str] = ()):
        self.table = table
        self.forward_zones = {z.rstrip(".").lower() for z in forward_zones}

    def handle(self, request: Request) -> Reply | None:
        zone = self.table.find(request.qname)
        if zone is None or self._forwarded(request.qname, zone.origin):
            return None
        reply = zone.lookup(request.question.qname, request.qname, request.qtype)
        reply.replay_until = float("inf")       # valid until the zones change (the server forgets then)
        return reply

    def _forwarded(self, name: str, origin: str) -> bool:
        if not self.forward_zones:
            return False
        while True:
            if name in self.forward_zones:
                return True
            if name == origin or "." not in name:
                return False
            name = name.partition(".")[2]


class Forward:
    """Cache, then the upstream race. Failure is SERVFAIL (or the stale answer), never NXDOMAIN."""

    name = "forward"

    def __init__(self, forwarder: Forwarder, cache: ResponseCache, stats: DnsStats,
                 upstreams: list[Upstream], zone_upstreams: dict[str, list[Upstream]] | None = None,
                 max_inflight: int = 1000, clock: Callable[[], float] = time.monotonic):
        if max_inflight < 1:
            raise ValueError("max_inflight must be at least 1")
        self.forwarder = forwarder
        self.cache = cache
        self.stats = stats
        self.upstreams = upstreams
        self.zone_upstreams = {z.rstrip(".").lower(): u for z, u in (zone_upstreams or {}).items()}
        self.max_inflight = max_inflight
        self.clock = clock
        self._pending: dict[CacheKey, asyncio.Future] = {}

    @property
    def inflight(self) -> int:
        return len(self._pending)

    def route(self, name: str) -> tuple[str, list[Upstream]]:
        """(zone label for metrics, upstreams) for a name: the most specific forward zone, else default."""
        probe = name
        while True:
            if probe in self.zone_upstreams:
                return probe, self.zone_upstreams[probe]
            if "." not in probe:
                return ".", self.upstreams
            probe = probe.partition(".")[2]

    def handle(self, request: Request) -> Reply | Awaitable[Reply]:
        key = (request.qname, request.qtype, request.qclass)
        zone, upstreams = self.route(request.qname)
        now = self.clock()
        entry = self.cache.fresh(key, now)
        if entry is not None:
            return self._from_cache(entry, now, zone)
        stale = self.cache.stale(key, now)
        if stale is not None and now < stale.retry_after:
            return self._from_cache(stale, now, zone, stale=True)
        self.stats.cache_misses += 1
        pending = self._pending.get(key)
        if pending is None:
            if len(self._pending) >= self.max_inflight:
                self.stats.drop("inflight")
                return Reply(SERVFAIL, source="error", zone=zone)
            qname = DNSLabel(tuple(label.lower() for label in request.question.qname.label))
            pending = asyncio.ensure_future(self._fetch(key, qname, upstreams))
            self._pending[key] = pending
            pending.add_done_callback(lambda _f, key=key: self._pending.pop(key, None))
        return self._await(pending, key, zone)

    async def _fetch(self, key: CacheKey, qname: DNSLabel, upstreams: list[Upstream]) -> CachedAnswer | None:
        try:
            answer = await self.forwarder.resolve(upstreams, qname, key[1], key[2])
        except UpstreamFailure as exc:
            log.debug("forwarding %s failed: %s", key, exc)
            return None
        now = self.clock()
        stored = self.cache.put(key, answer, now)
        if stored is None:      # an answer we may not keep (TTL 0, SERVFAIL-free but uncachable)
            stored = CachedAnswer(answer.header.rcode, list(answer.rr), list(answer.auth),
                                  [rr for rr in answer.ar if rr.rtype != QTYPE.OPT], now, 0)
        return stored

    async def _await(self, pending: asyncio.Future, key: CacheKey, zone: str) -> Reply:
        # shield: one client giving up (TCP close) must not cancel the fetch others wait for
        entry = await asyncio.shield(pending)
        now = self.clock()
        if entry is not None:
            answers, authority, additional = entry.sections(now)
            return Reply(entry.rcode, answers, authority, additional, source="upstream", zone=zone)
        stale = self.cache.stale(key, now)
        if stale is not None:
            stale.retry_after = now + self.cache.failure_recheck
            return self._from_cache(stale, now, zone, stale=True)
        return Reply(SERVFAIL, source="error", zone=zone)

    @staticmethod
    def _from_cache(entry: CachedAnswer, now: float, zone: str, stale: bool = False) -> Reply:
        answers, authority, additional = entry.sections(now, stale=stale)
        if stale:
            return Reply(entry.rcode, answers, authority, additional, source="stale", zone=zone)
        return Reply(entry.rcode, answers, authority, additional, source="cache", zone=zone,
                     replay_until=entry.expires, ttl_origin=entry.stored_at, ttl_age=int(now - entry.stored_at))
