"""The overlay on one agent: what the integrator wires (view in, kernel programmed, tasks attached).

    view ──on_view──► desired_state ──► OverlayReconciler ──► OverlayNetlink (links, peers, rules)
                                   └──► NAT rules (masquerade + port mappings) ──► OverlayNetfilter
    executor ──attach_container──► ContainerNetworks ──► veth + address; state file; NAT rules
    run(): every ``reconcile_interval`` seconds the same pass again (drift repair)

State file (``<state_dir>/overlay.json``): this agent's allocation and its tasks' addresses and
port mappings, so a restarted agent adopts the kernel state and keeps running tasks' addresses.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path

from prometheus_client import CollectorRegistry

from cluster.view import ClusterView, OverlayAllocation, OverlayConfig
from kernel.offloop import KernelThread
from overlay.container import DEFAULT_HOST_PORTS, ContainerAttachment, ContainerNetworks
from overlay.desired import BRIDGES, DesiredState, OverlayNotReady, desired_state, plan_mtu
from overlay.metrics import OverlayMetrics
from overlay.netfilter import NatRules, NetfilterError, OverlayNetfilter
from overlay.netfilter_kernel import NftablesNetfilter
from overlay.netlink import OverlayKernelError, OverlayNetlink
from overlay.reconciler import OverlayReconciler, ReconcileResult

log = logging.getLogger("navstar.overlay")

DEFAULT_STATE_ROOT = Path("/var/lib/navstar/overlay")
STATE_VERSION = 1


class OverlayAgent:
    """Thread-safe: ``on_view``, the periodic pass and attach/detach are serialised by one lock."""

    def __init__(self, netlink: OverlayNetlink, agent_id: str, underlay_ip: str, *,
                 reconcile_interval: float = 30.0, netfilter: OverlayNetfilter | None = None,
                 state_dir: str | Path | None = None, host_ports: tuple[int, int] = DEFAULT_HOST_PORTS,
                 registry: CollectorRegistry | None = None,
                 on_allocation: Callable[[OverlayAllocation, int], object] | None = None) -> None:
        """``on_allocation(allocation, container MTU)`` runs on every pass that knows this agent's
        allocation (and once for one restored from the state file): the CNI configurations of
        the dcos networks are written from it."""
        if reconcile_interval <= 0:
            raise ValueError(f"reconcile_interval: {reconcile_interval} must be positive")
        self.netlink = netlink
        self.agent_id = agent_id
        self.underlay_ip = underlay_ip
        self.reconcile_interval = reconcile_interval
        self.netfilter = netfilter if netfilter is not None else NftablesNetfilter()
        self.state_file = Path(state_dir or DEFAULT_STATE_ROOT / agent_id) / "overlay.json"
        self.metrics = OverlayMetrics.for_registry(registry)
        self.reconciler = OverlayReconciler(netlink, self.metrics)
        self.containers = ContainerNetworks(netlink, host_ports)
        self.allocation: OverlayAllocation | None = None
        self.config = OverlayConfig()
        self.last_result: ReconcileResult | None = None
        self._view: ClusterView | None = None
        self._nat_programmed: NatRules | None = None
        self._lock = threading.RLock()
        # Where passes run for coroutines (kernel.offloop): one at a time, off the loop.
        self._kernel_thread = KernelThread("overlay-agent")
        self.on_allocation = on_allocation
        self._load()

    # -- the cluster view
    def on_view(self, view: ClusterView) -> ReconcileResult:
        """Reconcile now against ``view``. Idempotent; adopts existing kernel state; never raises
        for kernel trouble (see the result's ``errors`` and the metrics)."""
        with self._lock:
            self._view = view
            self.config = view.overlay
            return self.reconcile()

    def reconcile(self) -> ReconcileResult:
        """One pass against the last view. Before any view nothing is touched: the peers a
        previous run programmed keep serving until the master says otherwise."""
        with self._lock:
            if self._view is None:
                return ReconcileResult(errors=["no cluster view yet"])
            try:
                desired = desired_state(self._view, self.agent_id, self.underlay_ip,
                                        self.netlink.link_mtu_of(self.underlay_ip), self.allocation)
            except OverlayNotReady as exc:
                self.metrics.errors.labels("view").inc()
                return ReconcileResult(errors=[str(exc)])
            result = self.reconciler.reconcile(desired)
            self._adopt_allocation(desired)
            self._repair_containers(result)
            self._reconcile_nat(result)
            self._count_containers()
            self._save()
            self.last_result = result
            return result

    async def apply_view(self, view: ClusterView) -> ReconcileResult:
        """``on_view`` for a coroutine: the pass runs on the overlay's kernel thread."""
        return await self._kernel_thread.run(self.on_view, view)

    async def run(self) -> None:
        """Reconcile every ``reconcile_interval`` seconds, off the event loop, until cancelled."""
        while True:
            try:
                await self._kernel_thread.run(self.reconcile)
            except Exception:   # a bug must not end drift repair for good
                log.exception("overlay: reconcile pass failed")
            await asyncio.sleep(self.reconcile_interval)

    # -- tasks
    def attach_container(self, task_id: str, netns_name: str, bridge: str,
                         port_mappings: Iterable[tuple[int, int, str]] = ()) -> ContainerAttachment:
        """Put the task namespace on ``bridge`` ("m-dcos" or "d-dcos"); port mappings are
        (host_port, container_port, "tcp"|"udp"), host port 0 = pick one from the agent's range.
        Idempotent per task id. Raises OverlayNotReady (no allocation yet), ContainerNetworkError
        (bad input, port taken), AddressPoolExhausted (the half is full), OverlayKernelError or
        NetfilterError (the kernel refused; nothing is kept)."""
        with self._lock:
            if self.allocation is None:
                raise OverlayNotReady(f"agent {self.agent_id!r} has no overlay allocation yet")
            attachment = self.containers.attach(task_id, netns_name, bridge, port_mappings)
            try:
                self._apply_nat(self._nat_rules())
            except NetfilterError:
                self.containers.detach(task_id)
                self._save()
                raise
            self._save()
            self._count_containers()
            log.info("overlay: task %s on %s at %s%s", task_id, bridge, attachment.ip,
                     "".join(f", {m.host_port}/{m.protocol}→{m.container_port}" for m in attachment.port_mappings))
            return attachment

    def detach_container(self, task_id: str) -> None:
        """Remove the task's interface, address and port mappings. Unknown ids are ignored."""
        with self._lock:
            if task_id not in self.containers.tasks:
                return
            self.containers.detach(task_id)
            self._save()
            self._count_containers()
            try:
                self._apply_nat(self._nat_rules())
            except NetfilterError as exc:   # the periodic pass retries
                self.metrics.errors.labels("nat").inc()
                log.warning("overlay: removing port mappings of %s: %s", task_id, exc)

    def attachment(self, task_id: str) -> ContainerAttachment | None:
        with self._lock:
            return self.containers.attachment(task_id) if task_id in self.containers.tasks else None

    # -- internals
    def _adopt_allocation(self, desired: DesiredState) -> None:
        me = self._view.agent(self.agent_id) if self._view else None
        allocation = (me.overlay if me else None) or self.allocation
        if allocation is not None:
            if allocation != self.allocation:
                log.info("overlay: allocation %s", allocation.model_dump())
            self.allocation = allocation
            self.containers.configure(allocation, desired.mtu.container)
            self._announce_allocation(allocation, desired.mtu.container)

    def _announce_allocation(self, allocation: OverlayAllocation, mtu: int) -> None:
        if self.on_allocation is None:
            return
        try:
            self.on_allocation(allocation, mtu)
        except Exception:   # the overlay itself goes on; the next pass tries again
            self.metrics.errors.labels("cni").inc()
            log.exception("overlay: writing the dcos CNI configurations")

    def _repair_containers(self, result: ReconcileResult) -> None:
        try:
            for line in self.containers.repair():
                log.warning("overlay: %s", line)
                result.repairs += 1
                result.changes += 1
                self.metrics.repairs.labels("veth").inc()
        except OverlayKernelError as exc:
            result.errors.append(str(exc))
            self.metrics.errors.labels("veth").inc()

    def _nat_rules(self) -> NatRules:
        return NatRules(agent_ip=self.underlay_ip, overlay_subnet=str(ipaddress.IPv4Network(self.config.subnet)),
                        vtep=self.config.vtep_name, port_mappings=self.containers.port_mappings())

    def _reconcile_nat(self, result: ReconcileResult) -> None:
        want = self._nat_rules()
        programmed_before = self._nat_programmed
        try:
            if self._apply_nat(want):
                result.changes += 1
                if programmed_before == want:
                    result.repairs += 1
                    self.metrics.repairs.labels("nat").inc()
        except NetfilterError as exc:
            result.errors.append(str(exc))
            self.metrics.errors.labels("nat").inc()

    def _apply_nat(self, want: NatRules) -> bool:
        """True if the rules had to be written."""
        have = self.netfilter.current()
        if have is not None and not have.port_mappings:
            have = replace(have, agent_ip=want.agent_ip)   # the address only shows in mapping rules
        if have != want:
            self.netfilter.apply(want)
            self.metrics.changes.labels("nat", "set").inc()
        self._nat_programmed = want
        return have != want

    def _count_containers(self) -> None:
        for bridge in BRIDGES:
            self.metrics.containers.labels(bridge).set(
                sum(1 for t in self.containers.tasks.values() if t.bridge == bridge))

    def _save(self) -> None:
        data = {"version": STATE_VERSION, "agent_id": self.agent_id,
                "allocation": self.allocation.model_dump() if self.allocation else None,
                "mtu": self.containers.mtu, "containers": self.containers.to_dict()}
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.state_file)

    def _load(self) -> None:
        try:
            data = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.error("overlay: ignoring unreadable state file %s: %s", self.state_file, exc)
            return
        if data.get("version") != STATE_VERSION or data.get("agent_id") != self.agent_id or not data.get("allocation"):
            log.warning("overlay: state file %s is for another agent or version; starting afresh", self.state_file)
            return
        try:
            self.allocation = OverlayAllocation(**data["allocation"])
            mtu = int(data.get("mtu") or plan_mtu(self.config.mtu, None).container)
            self.containers.restore(data.get("containers", {}), self.allocation, mtu)
        except (TypeError, ValueError, KeyError) as exc:
            log.error("overlay: ignoring bad state file %s: %s", self.state_file, exc)
            self.allocation = None
            self.containers = ContainerNetworks(self.netlink, self.containers.host_ports)
            return
        log.info("overlay: restored allocation %s and %d tasks from %s", self.allocation.vtep_ip,
                 len(self.containers.tasks), self.state_file)
        self._announce_allocation(self.allocation, mtu)
