"""Prometheus metrics of the load balancer, read from its state at scrape time.

navstar_minuteman_connections_total{vip,protocol,backend}         new connections sent to a backend
navstar_minuteman_failed_connections_total{vip,protocol,backend}  refused/unanswered attempts seen
navstar_minuteman_backends{vip,protocol,state}                    backends by state
navstar_minuteman_vips{status}                                    VIPs programmed / in error / pending
navstar_minuteman_drift_repairs_total                             re-applies after the kernel drifted
navstar_minuteman_reconcile_duration_seconds                      time to apply a table (histogram)

The composition root makes one per load balancer and registers it; the load balancer knows
nothing of Prometheus (it only calls its ``apply_listeners``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from minuteman.reconciler import LoadBalancer

STATES = ("up", "quarantined", "draining", "unhealthy", "unreachable")


class MinutemanMetrics:
    def __init__(self, lb: LoadBalancer, registry: CollectorRegistry | None = None) -> None:
        """Collects from ``lb`` at scrape time; registers in ``registry`` if one is given."""
        self._lb = lb
        self._registry: CollectorRegistry | None = None
        self.reconcile_duration = Histogram(
            "navstar_minuteman_reconcile_duration_seconds", "Time to apply the VIP table to the dataplane",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5), registry=None)
        lb.apply_listeners.append(self.reconcile_duration.observe)
        if registry is not None:
            registry.register(self)
            self._registry = registry

    def unregister(self) -> None:
        """Leave the registry (idempotent)."""
        if self._registry is not None:
            self._registry.unregister(self)
            self._registry = None

    def describe(self) -> list[Metric]:
        return []     # collected lazily; describing would read the dataplane at registration

    def collect(self) -> Iterator[Metric]:
        lb = self._lb
        labels = ["vip", "protocol", "backend"]
        new = CounterMetricFamily("navstar_minuteman_connections", "New connections sent to a backend", labels=labels)
        failed = CounterMetricFamily("navstar_minuteman_failed_connections",
                                     "Connection attempts to a backend that were refused or unanswered", labels=labels)
        by_state = GaugeMetricFamily("navstar_minuteman_backends", "Backends of a VIP by state",
                                     labels=["vip", "protocol", "state"])
        vips = GaugeMetricFamily("navstar_minuteman_vips", "VIPs by status", labels=["status"])
        statuses: Counter[str] = Counter()
        for vip in lb.vips_detail():
            statuses["error" if vip["error"] else "programmed" if vip["programmed"] else "pending"] += 1
            states: Counter[str] = Counter()
            for b in vip["backend"]:
                backend = f"{b['ip']}:{b['port']}"
                new.add_metric([vip["vip"], vip["protocol"], backend], b["connections"])
                failed.add_metric([vip["vip"], vip["protocol"], backend], b["failures"])
                states[b["state"]] += 1
            for state in STATES:
                by_state.add_metric([vip["vip"], vip["protocol"], state], states[state])
        for status in ("programmed", "error", "pending"):
            vips.add_metric([status], statuses[status])
        repairs = CounterMetricFamily("navstar_minuteman_drift_repairs", "Re-applies after the dataplane drifted")
        repairs.add_metric([], lb.status.drift_repairs)
        yield from (new, failed, by_state, vips, repairs)
        yield from self.reconcile_duration.collect()
