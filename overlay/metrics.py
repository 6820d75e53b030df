"""Prometheus metrics of the overlay (``navstar_overlay_*``).

One set per registry: asking twice for the same registry returns the same object, so several
components (or tests) can share the process-wide default registry without clashing.
"""

from __future__ import annotations

import threading

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

_by_registry: dict[int, OverlayMetrics] = {}
_lock = threading.Lock()


class OverlayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.peers = Gauge("navstar_overlay_peers_programmed",
                           "Peer agents whose neighbour, FDB and routes are programmed", registry=registry)
        self.reconcile_runs = Counter("navstar_overlay_reconcile_runs_total",
                                      "Reconcile passes, by result (ok, error)", ["result"], registry=registry)
        self.reconcile_duration = Histogram("navstar_overlay_reconcile_duration_seconds",
                                            "Time of one reconcile pass", registry=registry,
                                            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.changes = Counter("navstar_overlay_changes_total", "Kernel changes made, by object and action",
                               ["object", "action"], registry=registry)
        self.repairs = Counter("navstar_overlay_repairs_total",
                               "Drift repaired: programmed state found missing or altered, by object",
                               ["object"], registry=registry)
        self.errors = Counter("navstar_overlay_errors_total", "Failed kernel operations, by stage",
                              ["stage"], registry=registry)
        self.containers = Gauge("navstar_overlay_containers_attached", "Task interfaces on the overlay bridges",
                                ["bridge"], registry=registry)

    @classmethod
    def for_registry(cls, registry: CollectorRegistry | None = None) -> OverlayMetrics:
        registry = registry if registry is not None else REGISTRY
        with _lock:
            metrics = _by_registry.get(id(registry))
            if metrics is None or metrics.registry is not registry:
                metrics = _by_registry[id(registry)] = cls(registry)
            return metrics
