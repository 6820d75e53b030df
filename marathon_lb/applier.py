"""Keeps HAProxy on the latest plan: checks, writes, reloads or patches at run time, restarts.

``apply(plan)``:

1. slots for the plan (a staying server keeps its slot), the configuration text;
2. same text as running → nothing; else the text goes to ``haproxy.cfg.new`` and ``haproxy -c``;
   refused → counted, logged with HAProxy's words, the running file and process untouched;
3. accepted → the file replaces ``haproxy.cfg`` (so a restart or reload always reads the latest
   accepted one); same structure as running → runtime API (``set server``), else a reload.

``supervise()`` restarts HAProxy whenever it exits without being asked to, on the current file.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from marathon_lb.haproxy import Haproxy, HaproxyError
from marathon_lb.plan import Plan
from marathon_lb.render import Settings, Slots, assign_slots, render, runtime_commands

log = logging.getLogger("navstar.marathon_lb")


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.reloads = Counter("navstar_marathon_lb_reloads_total", "HAProxy reloads (new configuration)", registry=r)
        self.runtime_updates = Counter("navstar_marathon_lb_runtime_updates_total",
                                       "server changes applied through the runtime API, without a reload", registry=r)
        self.refused = Counter("navstar_marathon_lb_config_refused_total",
                               "configurations haproxy -c refused (the running one was kept)", registry=r)
        self.restarts = Counter("navstar_marathon_lb_haproxy_restarts_total",
                                "HAProxy restarts after it exited unasked", registry=r)
        self.failures = Counter("navstar_marathon_lb_apply_failures_total",
                                "reloads or starts that failed (retried on the next change)", registry=r)
        self.skipped = Gauge("navstar_marathon_lb_skipped_apps", "apps of the group left out (bad labels, port clash)",
                             registry=r)
        self.skipped_app = Gauge("navstar_marathon_lb_app_skipped", "1 for an app left out, with the reason",
                                 ["app", "reason"], registry=r)
        self.backends = Gauge("navstar_marathon_lb_backends", "backends in the running configuration", registry=r)
        self.servers = Gauge("navstar_marathon_lb_servers", "backend servers (tasks) in the running configuration",
                             registry=r)
        self.apply_seconds = Histogram("navstar_marathon_lb_apply_seconds", "render, check and apply one plan",
                                       registry=r, buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
        self.reads = Counter("navstar_marathon_lb_marathon_reads_total", "re-reads of Marathon's apps and tasks",
                             ["result"], registry=r)
        self.events = Counter("navstar_marathon_lb_marathon_events_total", "Marathon events received", ["type"],
                              registry=r)
        self.connected = Gauge("navstar_marathon_lb_marathon_connected", "1 while the event stream is attached",
                               registry=r)


@dataclass
class Status:
    """What ``/_marathon_lb/status`` shows."""
    plan: Plan = field(default_factory=Plan)
    last_error: str = ""
    last_refusal: str = ""
    applied_at: float = 0.0
    how: str = ""                 # "start", "reload", "runtime", "unchanged"


class Applier:
    def __init__(self, haproxy: Haproxy, settings: Settings, metrics: Metrics | None = None) -> None:
        self.haproxy = haproxy
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.config_path = settings.run_dir / "haproxy.cfg"
        self.candidate_path = settings.run_dir / "haproxy.cfg.new"
        self.text = ""                # the running configuration (accepted and in use)
        self.structure = ""
        self.slots: Slots = {}
        self.plan = Plan()
        self.status = Status()
        self._lock = asyncio.Lock()
        self._stopping = False

    async def apply(self, plan: Plan) -> str:
        """Makes HAProxy serve ``plan``; how it did: ``unchanged``, ``refused``, ``runtime``,
        ``reload``, ``start`` or ``failed`` (HAProxy did not take it; retried on the next plan).
        Never raises for HAProxy's refusals or failures: they are counted and logged."""
        async with self._lock:
            started = time.perf_counter()
            try:
                return await self._apply(plan)
            finally:
                self.metrics.apply_seconds.observe(time.perf_counter() - started)

    async def _apply(self, plan: Plan) -> str:
        self._publish_skips(plan)
        slots = assign_slots(plan, self.slots, self.settings.min_slots)
        text = render(plan, slots, self.settings)
        if text == self.text and self.haproxy.running():
            self.status.plan = plan
            return "unchanged"
        structure = render(plan, slots, self.settings, with_servers=False)
        self.settings.run_dir.mkdir(parents=True, exist_ok=True)
        self.candidate_path.write_text(text)
        problem = await self.haproxy.check(self.candidate_path)
        if problem is not None:
            self.metrics.refused.inc()
            self.status.last_refusal = problem
            log.error("haproxy refused the new configuration; keeping the running one: %s", problem)
            return "refused"
        how = "reload"
        if not self.haproxy.running():
            how = "start"
        elif structure == self.structure and slots.keys() == self.slots.keys():
            how = "runtime"
        os.replace(self.candidate_path, self.config_path)
        try:
            if how == "runtime":
                commands = runtime_commands(self.slots, slots)
                try:
                    await self.haproxy.runtime(commands)
                except HaproxyError as exc:
                    log.warning("runtime update failed (%s); reloading instead", exc)
                    how = "reload"
                    await self.haproxy.reload()
            elif how == "start":
                await self.haproxy.start()
            else:
                await self.haproxy.reload()
        except HaproxyError as exc:
            self.metrics.failures.inc()
            self.status.last_error = str(exc)
            # The file holds the new text: the supervisor's restart or the next change picks it up.
            self.text = ""
            log.error("%s failed: %s", how, exc)
            return "failed"
        if how == "runtime":
            self.metrics.runtime_updates.inc()
        elif how == "reload":
            self.metrics.reloads.inc()
        self.text, self.structure, self.slots, self.plan = text, structure, slots, plan
        self.status.plan, self.status.applied_at, self.status.how = plan, time.time(), how
        self.metrics.backends.set(len(plan.backends))
        self.metrics.servers.set(sum(len(b.servers) for b in plan.backends))
        log.info("applied by %s: %d backends, %d servers, %d apps skipped", how, len(plan.backends),
                 sum(len(b.servers) for b in plan.backends), len(plan.skipped))
        return how

    def _publish_skips(self, plan: Plan) -> None:
        if {(s.app_id, s.reason) for s in plan.skipped} != {(s.app_id, s.reason) for s in self.status.plan.skipped}:
            for skipped in plan.skipped:
                log.warning("app %s skipped: %s", skipped.app_id, skipped.reason)
        self.metrics.skipped_app.clear()
        for skipped in plan.skipped:
            self.metrics.skipped_app.labels(skipped.app_id, skipped.reason).set(1)
        self.metrics.skipped.set(len(plan.skipped))

    async def supervise(self, retry: float = 1.0) -> None:
        """Restarts HAProxy on the current file each time it exits unasked (until ``stop``)."""
        while not self._stopping:
            if not self.haproxy.running():
                if not self.config_path.exists():
                    await asyncio.sleep(retry)
                    continue
                async with self._lock:
                    if self.haproxy.running():       # apply() started it meanwhile
                        continue
                    try:
                        await self.haproxy.start()
                        self.metrics.restarts.inc()
                        log.warning("haproxy restarted on %s", self.config_path)
                    except HaproxyError as exc:
                        self.metrics.failures.inc()
                        log.error("haproxy restart failed: %s", exc)
                        await asyncio.sleep(retry)
                        continue
            code = await self.haproxy.wait()
            if not self._stopping:
                log.error("haproxy exited with %d; restarting it", code)

    async def stop(self) -> None:
        self._stopping = True
        await self.haproxy.stop()
