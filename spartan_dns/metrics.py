"""Prometheus metrics of the resolver (``navstar_dns_*``).

The query path only bumps plain Python counters (a dict item, a list slot): prometheus-client's
labelled children take a lock and a label lookup per call, which costs more than answering a cached
query. :class:`DnsMetrics` is a custom collector that turns those counters into metric families
when Prometheus scrapes.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

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


class DnsMetrics(Collector):
    def __init__(self) -> None:
        # (zone, type, rcode, source) → requests answered
        self.requests: dict[tuple[str, str, str, str], int] = {}
        self.latency: dict[str, Latency] = {source: Latency() for source in SOURCES}
        self.dropped: dict[str, int] = {}
        self.upstream_queries: dict[str, int] = {}
        self.upstream_failures: dict[tuple[str, str], int] = {}
        self.cache_misses = 0
        self.zone_records: dict[str, int] = {}
        self.gauges: dict[str, Callable[[], float]] = {}    # set by the service: cache size, in flight

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

    # -- export -------------------------------------------------------------------------------
    def describe(self) -> Iterator:
        return iter(())      # unchecked collector: families are only known at collect time

    def collect(self) -> Iterator:
        requests = CounterMetricFamily("navstar_dns_requests", "DNS requests answered, by zone, type and rcode",
                                       labels=["zone", "type", "rcode"])
        by_zone: dict[tuple[str, str, str], int] = {}
        cache_hits = stale = 0
        for (zone, qtype, rcode, source), count in list(self.requests.items()):
            by_zone[(zone, qtype, rcode)] = by_zone.get((zone, qtype, rcode), 0) + count
            if source == "cache":
                cache_hits += count
            elif source == "stale":
                stale += count
        for labels, count in sorted(by_zone.items()):
            requests.add_metric(list(labels), count)
        yield requests

        latency = HistogramMetricFamily("navstar_dns_request_duration_seconds",
                                        "Time from reading a query to sending its answer, by what answered it",
                                        labels=["source"])
        for source, hist in self.latency.items():
            cumulative, buckets = 0, []
            for bound, count in zip((*LATENCY_BUCKETS, float("inf")), hist.counts, strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            latency.add_metric([source], buckets, hist.total)
        yield latency

        hits = CounterMetricFamily("navstar_dns_cache_hits", "Forwarded questions answered from the cache")
        hits.add_metric([], cache_hits)
        yield hits
        misses = CounterMetricFamily("navstar_dns_cache_misses", "Forwarded questions not in the cache")
        misses.add_metric([], self.cache_misses)
        yield misses
        stale_family = CounterMetricFamily("navstar_dns_cache_stale_answers",
                                           "Expired answers served because every upstream failed (RFC 8767)")
        stale_family.add_metric([], stale)
        yield stale_family

        queries = CounterMetricFamily("navstar_dns_upstream_requests", "Queries sent upstream", labels=["upstream"])
        for upstream, count in sorted(self.upstream_queries.items()):
            queries.add_metric([upstream], count)
        yield queries
        failures = CounterMetricFamily("navstar_dns_upstream_failures",
                                       "Upstream queries that gave no usable answer, by reason",
                                       labels=["upstream", "reason"])
        for labels, count in sorted(self.upstream_failures.items()):
            failures.add_metric(list(labels), count)
        yield failures

        dropped = CounterMetricFamily("navstar_dns_dropped", "Packets not answered, by reason", labels=["reason"])
        for reason, count in sorted(self.dropped.items()):
            dropped.add_metric([reason], count)
        yield dropped

        records = GaugeMetricFamily("navstar_dns_zone_records", "Records in each of the node's zones",
                                    labels=["zone"])
        for zone, count in sorted(self.zone_records.items()):
            records.add_metric([zone], count)
        yield records

        for name, read in self.gauges.items():
            gauge = GaugeMetricFamily(name, name.replace("navstar_dns_", "").replace("_", " "))
            gauge.add_metric([], read())
            yield gauge
