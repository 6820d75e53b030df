"""The resolver's counters, bumped on the query path (plain Python: a dict item, a list slot).

prometheus-client's labelled children take a lock and a label lookup per call, which costs more
than answering a cached query; :mod:`spartan_dns.metrics` turns these counters into metric
families when Prometheus scrapes.
"""

from __future__ import annotations

from bisect import bisect_left

# Seconds. The first buckets resolve the in-memory paths, the last ones upstream round trips.
LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                   0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

SOURCES = ("zone", "cache", "upstream", "stale", "error")


class Latency:
    """One histogram's state: ``counts[i]`` = observations in bucket i (last slot: +Inf)."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.total += seconds


class DnsStats:
    """What the query path counts; read by ``spartan_dns.metrics`` at scrape time."""

    def __init__(self) -> None:
        # (zone, type, rcode, source) → requests answered
        self.requests: dict[tuple[str, str, str, str], int] = {}
        self.latency: dict[str, Latency] = {source: Latency() for source in SOURCES}
        self.dropped: dict[str, int] = {}
        self.upstream_queries: dict[str, int] = {}
        self.upstream_failures: dict[tuple[str, str], int] = {}
        self.cache_misses = 0
        self.zone_records: dict[str, int] = {}
        self.kernel_answers = 0         # own-zone answers the kernel gave (spartan_dns.offload)

    # -- recording (the hot path inlines the first two) ---------------------------------------
    def answered(self, key: tuple[str, str, str, str], seconds: float) -> None:
        self.requests[key] = self.requests.get(key, 0) + 1
        self.latency[key[3]].observe(seconds)

    def drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def upstream_query(self, upstream: object) -> None:
        name = str(upstream)
        self.upstream_queries[name] = self.upstream_queries.get(name, 0) + 1

    def upstream_failure(self, upstream: object, reason: str) -> None:
        key = (str(upstream), reason)
        self.upstream_failures[key] = self.upstream_failures.get(key, 0) + 1
