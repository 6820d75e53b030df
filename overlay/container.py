"""Task network namespaces on ``m-dcos`` / ``d-dcos``: addresses, veths and BRIDGE port mappings.

The executor creates a task's network namespace; ``ContainerNetworks.attach`` gives it an
address from this agent's half for that bridge (``ContainerIpam``), a veth into the bridge,
a default route via the bridge's address, the overlay MTU, and the task's port mappings.
What is attached is kept in a dict (``to_dict`` / ``from_dict``) that the agent persists, so a
restarted agent keeps its running tasks' addresses.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from cluster.ipam import ContainerIpam
from cluster.view import OverlayAllocation
from overlay.desired import BRIDGES, D_DCOS, M_DCOS
from overlay.netfilter import PortMapping
from overlay.netlink import ContainerVeth, OverlayKernelError, OverlayNetlink

log = logging.getLogger("navstar.overlay")

DEFAULT_HOST_PORTS = (31000, 32000)


class ContainerNetworkError(ValueError):
    """Bad attach request (the message names the field) or a conflict with another task."""


@dataclass(frozen=True)
class ContainerAttachment:
    ip: str
    gateway: str
    mtu: int
    bridge: str = D_DCOS
    prefixlen: int = 25
    interface: str = "eth0"
    port_mappings: tuple[PortMapping, ...] = ()


@dataclass
class _Task:
    task_id: str
    netns: str
    bridge: str
    ip: str
    host_ifname: str
    port_mappings: list[PortMapping] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"netns": self.netns, "bridge": self.bridge, "ip": self.ip, "host_ifname": self.host_ifname,
                "port_mappings": [[m.host_port, m.container_port, m.protocol] for m in self.port_mappings]}

    @classmethod
    def from_dict(cls, task_id: str, raw: dict) -> _Task:
        mappings = [PortMapping(int(h), raw["ip"], int(c), p) for h, c, p in raw.get("port_mappings", [])]
        return cls(task_id, raw["netns"], raw["bridge"], raw["ip"], raw["host_ifname"], mappings)


def host_ifname(task_id: str) -> str:
    """A stable host-side name (IFNAMSIZ allows 15 characters)."""
    return "nv" + hashlib.sha1(task_id.encode()).hexdigest()[:11]


def _port(value: object, field_name: str, allow_zero: bool) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ContainerNetworkError(f"{field_name}: {value!r} is not a port number")
    if not (0 if allow_zero else 1) <= value <= 65535:
        raise ContainerNetworkError(f"{field_name}: {value} is outside {0 if allow_zero else 1}-65535")
    return value


class ContainerNetworks:
    """Attachments of one agent. ``attach`` and ``detach`` are idempotent per task id."""

    def __init__(self, netlink: OverlayNetlink, host_ports: tuple[int, int] = DEFAULT_HOST_PORTS) -> None:
        self.netlink = netlink
        self.host_ports = host_ports
        self.allocation: OverlayAllocation | None = None
        self.mtu = 1420
        self.pools: dict[str, ContainerIpam] = {}
        self.tasks: dict[str, _Task] = {}

    # -- configuration
    def configure(self, allocation: OverlayAllocation, mtu: int) -> None:
        """Use this agent's halves. Tasks whose address is outside the new halves are dropped."""
        self.mtu = mtu
        if allocation == self.allocation:
            return
        self.allocation = allocation
        self.pools = {M_DCOS: ContainerIpam(allocation.m_dcos, name=M_DCOS),
                      D_DCOS: ContainerIpam(allocation.d_dcos, name=D_DCOS)}
        for task in list(self.tasks.values()):
            if ipaddress.IPv4Address(task.ip) not in self.pools[task.bridge].pool:
                log.error("overlay: task %s had %s, outside this agent's %s now; detaching it",
                          task.task_id, task.ip, self.pools[task.bridge].pool)
                self.detach(task.task_id)
            else:
                self._hold(task)

    def _hold(self, task: _Task) -> None:
        snapshot = self.pools[task.bridge].snapshot()
        snapshot["owners"][task.task_id] = task.ip
        self.pools[task.bridge] = ContainerIpam.restore(snapshot)

    # -- attach / detach
    def attach(self, task_id: str, netns: str, bridge: str,
               port_mappings: Iterable[tuple[int, int, str]] = ()) -> ContainerAttachment:
        """Raises ContainerNetworkError (bad input, port taken), AddressPoolExhausted (no address
        left; nothing changed), OverlayKernelError (the kernel refused; nothing kept)."""
        if not task_id:
            raise ContainerNetworkError("task_id: must not be empty")
        if bridge not in BRIDGES:
            raise ContainerNetworkError(f"bridge: {bridge!r} is not one of {', '.join(BRIDGES)}")
        if not netns or "/" in netns:
            raise ContainerNetworkError(f"netns_name: {netns!r} is not a network namespace name")
        if self.allocation is None:
            raise ContainerNetworkError("the overlay is not configured yet (no allocation from the master)")
        requested = self._validate_mappings(task_id, port_mappings)
        known = self.tasks.get(task_id)
        if known is not None and (known.netns, known.bridge) != (netns, bridge):
            self.detach(task_id)
            known = None
        pool = self.pools[bridge]
        fresh = pool.get(task_id) is None
        ip = pool.allocate(task_id)
        mappings = self._assign_host_ports(task_id, ip, requested)
        task = _Task(task_id, netns, bridge, ip, host_ifname(task_id), mappings)
        try:
            if known is None or not self._veth_present(task):
                self.netlink.add_veth(self._veth(task))
        except OverlayKernelError:
            if fresh:
                pool.release(task_id)
            raise
        self.tasks[task_id] = task
        return self.attachment(task_id)

    def detach(self, task_id: str) -> None:
        task = self.tasks.pop(task_id, None)
        if task is None:
            return
        if task.bridge in self.pools:
            self.pools[task.bridge].release(task_id)
        try:
            self.netlink.delete_veth(task.host_ifname)
        except OverlayKernelError as exc:
            log.warning("overlay: removing %s of task %s: %s", task.host_ifname, task_id, exc)

    def attachment(self, task_id: str) -> ContainerAttachment:
        task = self.tasks[task_id]
        pool = self.pools[task.bridge]
        return ContainerAttachment(ip=task.ip, gateway=pool.gateway, mtu=self.mtu, bridge=task.bridge,
                                   prefixlen=pool.pool.prefixlen, port_mappings=tuple(task.port_mappings))

    def port_mappings(self) -> frozenset[PortMapping]:
        return frozenset(m for task in self.tasks.values() for m in task.port_mappings)

    # -- drift
    def repair(self) -> list[str]:
        """Re-create veths that vanished while their task namespace lives; forget tasks whose
        namespace is gone. Returns what it did, one line each."""
        done = []
        present = self.netlink.veths(BRIDGES)
        for task in list(self.tasks.values()):
            if not self.netlink.netns_exists(task.netns):
                done.append(f"task {task.task_id}: namespace {task.netns} is gone; released {task.ip}")
                self.detach(task.task_id)
            elif task.host_ifname not in present:
                self.netlink.add_veth(self._veth(task))
                done.append(f"task {task.task_id}: re-created {task.host_ifname}")
        return done

    # -- persistence
    def to_dict(self) -> dict:
        return {"tasks": {t: task.to_dict() for t, task in sorted(self.tasks.items())},
                "pools": {name: pool.snapshot() for name, pool in self.pools.items()}}

    def restore(self, data: dict, allocation: OverlayAllocation, mtu: int) -> None:
        self.allocation, self.mtu = allocation, mtu
        self.pools = {name: ContainerIpam.restore(raw) for name, raw in data.get("pools", {}).items()}
        if set(self.pools) != set(BRIDGES):
            self.pools = {M_DCOS: ContainerIpam(allocation.m_dcos, name=M_DCOS),
                          D_DCOS: ContainerIpam(allocation.d_dcos, name=D_DCOS)}
        self.tasks = {t: _Task.from_dict(t, raw) for t, raw in data.get("tasks", {}).items()}
        for task in self.tasks.values():
            if self.pools[task.bridge].get(task.task_id) != task.ip:
                self._hold(task)

    # -- internals
    def _veth(self, task: _Task) -> ContainerVeth:
        pool = self.pools[task.bridge]
        return ContainerVeth(host_ifname=task.host_ifname, bridge=task.bridge, netns=task.netns,
                             address=f"{task.ip}/{pool.pool.prefixlen}", gateway=pool.gateway, mtu=self.mtu)

    def _veth_present(self, task: _Task) -> bool:
        return task.host_ifname in self.netlink.veths([task.bridge])

    def _validate_mappings(self, task_id: str, raw: Iterable[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
        result = []
        seen: set[tuple[int, str]] = set()
        for i, item in enumerate(raw):
            where = f"port_mappings[{i}]"
            try:
                host, container, proto = item
            except (TypeError, ValueError):
                raise ContainerNetworkError(f"{where}: expected (host_port, container_port, protocol)") from None
            host = _port(host, f"{where}.host_port", allow_zero=True)
            container = _port(container, f"{where}.container_port", allow_zero=False)
            proto = str(proto).lower()
            if proto not in ("tcp", "udp"):
                raise ContainerNetworkError(f"{where}.protocol: {proto!r} is not tcp or udp")
            if host and (host, proto) in seen:
                raise ContainerNetworkError(f"{where}.host_port: {host}/{proto} is mapped twice")
            seen.add((host, proto))
            for other in self.tasks.values():
                if other.task_id != task_id and host and any(
                        (m.host_port, m.protocol) == (host, proto) for m in other.port_mappings):
                    raise ContainerNetworkError(
                        f"{where}.host_port: {host}/{proto} is already mapped to task {other.task_id}")
            result.append((host, container, proto))
        return result

    def _assign_host_ports(self, task_id: str, ip: str, requested: list[tuple[int, int, str]]) -> list[PortMapping]:
        """Host port 0 means: the lowest free port of the agent's range (per protocol)."""
        used = {(m.host_port, m.protocol) for t in self.tasks.values() if t.task_id != task_id for m in t.port_mappings}
        used |= {(h, p) for h, _c, p in requested if h}
        previous = {(m.container_port, m.protocol): m.host_port
                    for m in (self.tasks[task_id].port_mappings if task_id in self.tasks else [])}
        # A container port mapped for both protocols (Marathon's "udp,tcp") gets one host port
        # number, free for both.
        protocols_of: dict[int, set[str]] = {}
        for host, container, proto in requested:
            if not host:
                protocols_of.setdefault(container, set()).add(proto)
        chosen: dict[int, int] = {}
        mappings = []
        for host, container, proto in requested:
            if not host:
                same = chosen.get(container)
                host = previous.get((container, proto)) or (same if (same, proto) not in used else None) \
                    or self._free_port(used, protocols_of[container])
                chosen.setdefault(container, host)
                used.add((host, proto))
            mappings.append(PortMapping(host, ip, container, proto))
        return mappings

    def _free_port(self, used: set[tuple[int, str]], protocols: set[str]) -> int:
        begin, end = self.host_ports
        for port in range(begin, end + 1):
            if all((port, proto) not in used for proto in protocols):
                return port
        raise ContainerNetworkError(f"host_port: no free {'/'.join(sorted(protocols))} port left in {begin}-{end}")
