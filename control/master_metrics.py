"""The master's Prometheus metrics, read from live state at scrape time.

``navstar_master_apps``, ``navstar_master_tasks{state}``, ``navstar_master_agents{state}``,
``navstar_master_offers_total{result}``, ``navstar_master_allocation_cycle_seconds`` (histogram),
``navstar_master_deployments``, ``navstar_master_queued_instances``,
``navstar_master_rejected_agent_messages_total``, ``navstar_master_named_vips``,
``navstar_master_state_store_writable``; the v1 frameworks'
(``control.frameworks.metric_families``): ``navstar_master_frameworks{state}``,
``navstar_master_framework_tasks{state}``, ``navstar_master_framework_unacknowledged_updates``,
``navstar_master_scheduler_calls_refused_total``, ``navstar_master_dominant_share{framework}``.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from control.frameworks import metric_families

if TYPE_CHECKING:
    from control.master import Master

TASK_STATES = ("TASK_STAGING", "TASK_STARTING", "TASK_RUNNING", "TASK_KILLING", "TASK_UNREACHABLE")


class _StateCollector:
    def __init__(self, master: Master) -> None:
        self.master = master

    def collect(self):
        master = self.master
        scheduler = master.scheduler
        yield GaugeMetricFamily("navstar_master_apps", "Marathon apps defined", value=len(scheduler.apps))
        tasks = GaugeMetricFamily("navstar_master_tasks", "Live tasks by state", labels=["state"])
        by_state = Counter(t.state for t in scheduler.tasks.values())
        for state in TASK_STATES:
            tasks.add_metric([state], by_state.get(state, 0))
        yield tasks
        agents = GaugeMetricFamily("navstar_master_agents", "Registered agents by state", labels=["state"])
        records = master.registry.all()
        agents.add_metric(["reachable"], sum(1 for r in records if r.reachable))
        agents.add_metric(["unreachable"], sum(1 for r in records if not r.reachable))
        yield agents
        offers = CounterMetricFamily("navstar_master_offers", "Offers the scheduler handled", labels=["result"])
        offers.add_metric(["accepted"], scheduler.offers_accepted)
        offers.add_metric(["declined"], scheduler.offers_declined)
        yield offers
        yield GaugeMetricFamily("navstar_master_deployments", "Deployments in progress",
                                value=len(scheduler.deployments.all()))
        yield GaugeMetricFamily("navstar_master_queued_instances", "Instances waiting to be placed",
                                value=sum(e.count for e in scheduler.queue.entries.values()))
        yield CounterMetricFamily("navstar_master_rejected_agent_messages", "Garbage rejected from agents",
                                  value=master.rejected_statuses)
        yield GaugeMetricFamily("navstar_master_named_vips", "Named VIP addresses allocated",
                                value=len(master.vips.allocations))
        # As of the last scheduler cycle (asking the store itself may probe the disk).
        yield GaugeMetricFamily("navstar_master_state_store_writable",
                                "1 while the state store takes writes; 0: writes answer 503",
                                value=0 if scheduler.paused_by is not None else 1)
        yield from metric_families(master.frameworks, master.allocator, scheduler.frameworks)


class MasterMetrics:
    def __init__(self, master: Master) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_StateCollector(master))
        self.cycle_seconds = Histogram(
            "navstar_master_allocation_cycle_seconds", "Duration of one scheduler/allocation cycle",
            registry=self.registry, buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
        master.scheduler.observe_cycles(self.cycle_seconds.observe)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
