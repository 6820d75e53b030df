"""The load-balancer reconciler: cluster view (+ backend health) → desired VIP table → dataplane.

``on_view`` recomputes the table and hands it whole to the dataplane, which changes only what
differs (so a repeated view writes nothing). On start the reconciler adopts what the dataplane
already holds and keeps serving it until the first view arrives; ``run`` repairs drift, polls
backend health and re-applies when a backend goes in or out. Errors are kept as status per VIP,
never raised to the caller.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from cluster.view import ClusterView
from kernel.offloop import KernelThread
from minuteman.dataplane import Backend, Dataplane, Maintained, Startable, VipEntry, VipKey
from minuteman.health import BackendHealth, HealthConfig
from minuteman.maglev import DEFAULT_MIN_TABLE_SIZE, maglev_table
from minuteman.model import Problem, Vip, VipModel, vip_model

log = logging.getLogger("navstar.minuteman")

Balancing = Literal["maglev", "p2c"]
HEALTH_POLL_INTERVAL = 0.1


@dataclass
class LbStatus:
    adopted: int = 0                 # VIPs found in the dataplane at start
    view_version: int | None = None
    applies: int = 0
    drift_repairs: int = 0
    last_apply: float | None = None  # unix time
    errors: dict[VipKey, str] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)


class LoadBalancer:
    def __init__(self, dataplane: Dataplane, *, balancing: Balancing = "maglev",
                 health: HealthConfig | None = None, min_table_size: int = DEFAULT_MIN_TABLE_SIZE,
                 node_ip: str | None = None) -> None:
        if balancing not in ("maglev", "p2c"):
            raise ValueError(f"balancing: expected 'maglev' or 'p2c', got {balancing!r}")
        self.dataplane = dataplane
        self.node_ip = node_ip          # this node's address: its own bridge tasks are reached directly
        self.balancing = balancing
        self.health = BackendHealth(health or HealthConfig())
        self.min_table_size = min_table_size
        self.status = LbStatus()
        self._model = VipModel()
        # Applies, repairs and health polls run on this thread (kernel calls stay off the agent's
        # loop); the lock keeps direct callers on other threads (tests, benchmarks) in turn too.
        self.kernel_thread = KernelThread("minuteman")
        self._closed = False
        self._lock = threading.RLock()
        self._reported: set[Problem] = set()
        # Adopt: keep serving what the kernel holds until the first view says otherwise.
        self._desired: dict[VipKey, VipEntry] = dataplane.current()
        self._programmed: set[VipKey] = set(self._desired)
        self._out: frozenset[Backend] = frozenset()
        self.status.adopted = len(self._desired)
        # Called with each apply's duration in seconds (the metrics' histogram subscribes here).
        self.apply_listeners: list[Callable[[float], None]] = []
        if self._desired:
            log.info("adopted %d VIPs from the %s dataplane", len(self._desired), dataplane.name)

    # -- the reconcile loop -------------------------------------------------------------
    def on_view(self, view: ClusterView) -> None:
        """Recompute the desired table from ``view`` and apply it (idempotent). Never raises.
        Thread-safe: may run on a worker thread."""
        with self._lock:
            self._on_view(view)

    async def apply_view(self, view: ClusterView) -> None:
        """``on_view`` for a coroutine: the pass runs on the load balancer's kernel thread."""
        await self.kernel_thread.run(self.on_view, view)

    def _on_view(self, view: ClusterView) -> None:
        self._model = vip_model(view, self.node_ip)
        self.status.view_version = view.version
        self.status.problems = list(self._model.problems)
        for problem in self._model.problems:
            if problem not in self._reported:
                log.warning("VIP label problem: %s", problem)
        self._reported = set(self._model.problems)
        self._apply()

    def _apply(self, force: bool = False) -> None:
        self._out = self.health.out()
        table = self._table()
        if not force and self.status.applies and table == self._desired and not self.status.errors:
            # Most views change nothing here (staging, status, other apps); even a no-op apply
            # reads the kernel (tens of ms, on the loop that also answers DNS). Drift is repair()'s.
            return
        self._desired = table
        started = time.perf_counter()
        try:
            result = self.dataplane.apply(self._desired)
        except Exception as exc:   # a dataplane bug must not take the agent down; it is status
            log.exception("%s dataplane apply failed", self.dataplane.name)
            self.status.errors = {key: f"apply failed: {exc}" for key in self._desired}
            self._programmed = set()
            return
        finally:
            elapsed = time.perf_counter() - started
            for listener in self.apply_listeners:
                listener(elapsed)
        self.status.applies += 1
        self.status.last_apply = time.time()
        for key, message in result.errors.items():
            if self.status.errors.get(key) != message:
                log.error("VIP %s:%d/%s not programmed: %s", key.address, key.port, key.protocol, message)
        self.status.errors = dict(result.errors)
        self._programmed = set(result.programmed) - set(result.errors)

    def _table(self) -> dict[VipKey, VipEntry]:
        table: dict[VipKey, VipEntry] = {}
        for key, vip in self._model.vips.items():
            live = vip.in_state("up")
            usable = [b for b in live if b not in self._out] or live   # all out: fail open
            lookup = maglev_table(usable, self.min_table_size) if self.balancing == "maglev" else ()
            table[key] = VipEntry(key, tuple(usable), lookup, tuple(vip.in_state("draining")))
        self.health.forget(b.backend for vip in self._model.vips.values() for b in vip.backends)
        return table

    def repair(self) -> bool:
        """Re-apply if the dataplane drifted from the desired table; True if it had. Thread-safe."""
        with self._lock:
            return self._repair()

    def _repair(self) -> bool:
        try:
            current = self.dataplane.current()
        except Exception:
            log.exception("reading the %s dataplane failed", self.dataplane.name)
            return False
        if current == self._desired:
            return False
        self.status.drift_repairs += 1
        log.warning("%s dataplane drifted (%d VIPs differ); repairing", self.dataplane.name,
                    len(set(current.items()) ^ set(self._desired.items())))
        self._apply(force=True)
        return True

    def poll_health(self) -> bool:
        """Feed the dataplane's connection outcomes to health; re-apply if a backend went in or out.
        Skips this round (False) while a view or repair is being applied."""
        if not self._lock.acquire(blocking=False):
            return False
        try:
            return self._poll_health()
        finally:
            self._lock.release()

    def _poll_health(self) -> bool:
        self.health.poll(self.dataplane)
        if self.status.view_version is None or self.health.out() == self._out:
            return False
        went_out = self.health.out() - self._out
        if went_out:
            log.warning("backends out of rotation for %.0fs: %s", self.health.config.quarantine,
                        ", ".join(f"{b.ip}:{b.port}" for b in sorted(went_out)))
        self._apply()
        return True

    async def run(self, repair_interval: float = 5.0) -> None:
        """Serve until cancelled: start the dataplane's packet handling (if it has any), repair
        drift every ``repair_interval`` s, poll health every 0.1 s, probe actively if configured."""
        if isinstance(self.dataplane, Startable):
            await self.dataplane.start()
        maintained = self.dataplane if isinstance(self.dataplane, Maintained) else None
        loop = asyncio.get_running_loop()
        next_repair = next_probe = loop.time()
        probe_every = self.health.config.probe_interval
        while True:
            now = loop.time()
            if now >= next_repair:
                # Reading the kernel back (set and map dumps) is no work for the loop.
                try:
                    await self.kernel_thread.run(self.repair)
                except Exception:
                    log.exception("repairing the %s dataplane failed", self.dataplane.name)
                next_repair = loop.time() + repair_interval
            if probe_every is not None and now >= next_probe:
                next_probe = now + probe_every
                await self.health.probe({b for e in self._desired.values() for b in e.backends})
            if maintained is not None:      # periodic care, on this loop
                try:
                    maintained.maintain()
                except Exception:
                    log.exception("%s dataplane maintenance failed", self.dataplane.name)
            try:
                # Off the loop: a backend going out re-applies the table (kernel calls), and a
                # failure here must not end the agent.
                await self.kernel_thread.run(self.poll_health)
            except Exception:
                log.exception("polling the %s dataplane for backend health failed", self.dataplane.name)
            await asyncio.sleep(HEALTH_POLL_INTERVAL)

    def close(self, keep_kernel_state: bool = True) -> None:
        """Close the dataplane after the pass under way, then the kernel thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        with self._lock:
            self.kernel_thread.call(self.dataplane.close, keep_kernel_state=keep_kernel_state)
        self.kernel_thread.close()

    # -- what others read ---------------------------------------------------------------
    def programmed_names(self) -> dict[str, str]:
        """DNS name → VIP address, only for named VIPs the dataplane has programmed."""
        return {vip.dns_name: key.address for key, vip in self._model.vips.items()
                if vip.dns_name and key in self._programmed}

    def vips(self) -> list[tuple[Vip, VipEntry | None, str | None]]:
        """Every VIP of the model with its programmed entry (None if not programmed) and error."""
        return [(vip, self._desired.get(key) if key in self._programmed else None, self.status.errors.get(key))
                for key, vip in sorted(self._model.vips.items())]

    def backend_state(self, vip: Vip, backend: Backend) -> str:
        states = {b.state for b in vip.backends if b.backend == backend}
        if "up" in states and backend in self._out:
            return "quarantined"
        for state in ("up", "draining", "unhealthy", "unreachable"):
            if state in states:
                return state
        return "unknown"

    def vips_json(self) -> list[dict]:
        """The agent's ``/v1/vips``: programmed VIPs and the backends taking new connections."""
        return [{"vip": vip.label, "protocol": vip.key.protocol,
                 "backend": [{"ip": b.ip, "port": b.port} for b in entry.backends]}
                for vip, entry, _ in self.vips() if entry is not None]

    def vips_detail(self) -> list[dict]:
        """Every VIP with name, address, status and each backend's state and connection count."""
        counts = self.dataplane.connection_counts()
        out = []
        for vip, entry, error in self.vips():
            out.append({
                "vip": vip.label, "name": vip.dns_name, "address": vip.key.address,
                "port": vip.key.port, "protocol": vip.key.protocol, "apps": sorted(vip.apps),
                "programmed": entry is not None, "error": error,
                "backend": [{"ip": b.ip, "port": b.port, "state": self.backend_state(vip, b),
                             "connections": counts.get((vip.key, b), 0),
                             "failures": self.health.failed_total(b)}
                            for b in sorted({i.backend for i in vip.backends})],
            })
        return out
