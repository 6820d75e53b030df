"""Prometheus metrics of the resolver (``navstar_dns_*``), collected from a :class:`DnsService`.

The query path only bumps the plain counters of :class:`spartan_dns.stats.DnsStats`;
:class:`DnsMetrics` turns them into metric families when Prometheus scrapes. The composition root
(the agent, ``python -m spartan_dns``) makes one per service and registers it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from spartan_dns.stats import LATENCY_BUCKETS

if TYPE_CHECKING:
    from spartan_dns.service import DnsService


class DnsMetrics(Collector):
    def __init__(self, service: DnsService) -> None:
        self._service = service

    def describe(self) -> Iterator:
        return iter(())      # unchecked collector: families are only known at collect time

    def collect(self) -> Iterator:
        stats = self._service.stats
        requests = CounterMetricFamily("navstar_dns_requests", "DNS requests answered, by zone, type and rcode",
                                       labels=["zone", "type", "rcode"])
        by_zone: dict[tuple[str, str, str], int] = {}
        cache_hits = stale = 0
        for (zone, qtype, rcode, source), count in list(stats.requests.items()):
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
        for source, hist in stats.latency.items():
            cumulative, buckets = 0, []
            for bound, count in zip((*LATENCY_BUCKETS, float("inf")), hist.counts, strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            latency.add_metric([source], buckets, hist.total)
        yield latency

        kernel = CounterMetricFamily("navstar_dns_kernel_answers",
                                     "Own-zone answers given in the kernel before reaching the resolver (counted each second)")
        kernel.add_metric([], stats.kernel_answers)
        yield kernel

        hits = CounterMetricFamily("navstar_dns_cache_hits", "Forwarded questions answered from the cache")
        hits.add_metric([], cache_hits)
        yield hits
        misses = CounterMetricFamily("navstar_dns_cache_misses", "Forwarded questions not in the cache")
        misses.add_metric([], stats.cache_misses)
        yield misses
        stale_family = CounterMetricFamily("navstar_dns_cache_stale_answers",
                                           "Expired answers served because every upstream failed (RFC 8767)")
        stale_family.add_metric([], stale)
        yield stale_family

        queries = CounterMetricFamily("navstar_dns_upstream_requests", "Queries sent upstream", labels=["upstream"])
        for upstream, count in sorted(stats.upstream_queries.items()):
            queries.add_metric([upstream], count)
        yield queries
        failures = CounterMetricFamily("navstar_dns_upstream_failures",
                                       "Upstream queries that gave no usable answer, by reason",
                                       labels=["upstream", "reason"])
        for labels, count in sorted(stats.upstream_failures.items()):
            failures.add_metric(list(labels), count)
        yield failures

        dropped = CounterMetricFamily("navstar_dns_dropped", "Packets not answered, by reason", labels=["reason"])
        for reason, count in sorted(stats.dropped.items()):
            dropped.add_metric([reason], count)
        yield dropped

        records = GaugeMetricFamily("navstar_dns_zone_records", "Records in each of the node's zones",
                                    labels=["zone"])
        for zone, count in sorted(stats.zone_records.items()):
            records.add_metric([zone], count)
        yield records

        for name, help_text, value in (
                ("navstar_dns_cache_entries", "cache entries", len(self._service.cache)),
                ("navstar_dns_inflight_queries", "inflight queries", self._service.forward.inflight)):
            gauge = GaugeMetricFamily(name, help_text)
            gauge.add_metric([], value)
            yield gauge
