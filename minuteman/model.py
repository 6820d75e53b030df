"""Cluster view → the VIPs this cluster declares, with every backend and its state (pure).

Rules (DC/OS's): only running tasks are backends; ``healthy is False`` takes a backend out of
rotation; ``TASK_KILLING`` drains it (established flows continue, no new ones); tasks on
unreachable agents are dropped unless that would leave the VIP with none. Host and bridge tasks
are reached at ``agent_ip:host_port``, container-network tasks at ``container_ip:container_port``.
Malformed labels and address clashes come back as ``Problem``s; the rest is still served.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

from cluster.tasks import SERVING_STATES
from cluster.view import ClusterView, TaskInfo, TaskPort
from cluster.vip_labels import (
    VipClaim,
    VipLabelError,
    VipSpec,
    address_vip_clashes,
    is_vip_label_key,
    parse_vip,
    task_label_port_index,
    vip_address_key,
    vip_dns_name,
)
from minuteman.dataplane import Backend, VipKey

BackendState = Literal["up", "draining", "unhealthy", "unreachable"]


@dataclass(frozen=True)
class Problem:
    """Something in the view that could not be served as declared (for app events and logs)."""

    app_id: str
    message: str
    task_id: str | None = None

    def __str__(self) -> str:
        where = f"app {self.app_id}" + (f" task {self.task_id}" if self.task_id else "")
        return f"{where}: {self.message}"


@dataclass(frozen=True)
class BackendInfo:
    backend: Backend
    state: BackendState
    task_id: str
    app_id: str
    agent_id: str


@dataclass
class Vip:
    key: VipKey
    name: str | None = None          # "/web" for named VIPs
    framework: str | None = None
    dns_name: str | None = None      # "web.marathon.l4lb.thisdcos.directory"
    backends: list[BackendInfo] = field(default_factory=list)
    apps: set[str] = field(default_factory=set)

    @property
    def label(self) -> str:
        """How users name the VIP: ``web.marathon.l4lb.thisdcos.directory:80`` or ``1.2.3.4:80``."""
        return f"{self.dns_name or self.key.address}:{self.key.port}"

    def in_state(self, *states: BackendState) -> list[Backend]:
        return sorted({b.backend for b in self.backends if b.state in states})


@dataclass
class VipModel:
    vips: dict[VipKey, Vip] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)


def vip_model(view: ClusterView, node_ip: str | None = None) -> VipModel:
    """The VIP table as seen from the node at ``node_ip`` (bridge tasks on that node are reached
    at their container address: see ``_backend``)."""
    model = VipModel()
    unreachable = {a.agent_id for a in view.agents if not a.reachable}
    claims: dict[VipKey, set[str]] = {}
    for task in view.tasks:
        if task.state not in SERVING_STATES:
            continue
        for port, value in _vip_labels(task, model.problems):
            try:
                spec = parse_vip(value)
            except VipLabelError as exc:
                model.problems.append(Problem(task.app_id, str(exc), task.task_id))
                continue
            backend: Backend | None = None
            for protocol in port.protocols:      # a udp,tcp port: one VIP for each
                vip = _vip_for(view, model, task, protocol, spec)
                if vip is None:
                    continue
                backend = backend or _backend(task, port, model.problems, node_ip)
                if backend is None:
                    break
                claims.setdefault(vip.key, set()).add(task.app_id)
                vip.apps.add(task.app_id)
                vip.backends.append(BackendInfo(backend, _state(task, unreachable), task.task_id,
                                                task.app_id, task.agent_id))
    address_claims = [VipClaim(app, key.address, key.port, key.protocol)
                      for key, apps in claims.items() if model.vips[key].name is None for app in apps]
    model.problems.extend(Problem(clash.app_id, clash.message) for clash in address_vip_clashes(address_claims))
    for vip in model.vips.values():
        _keep_unreachable_if_nothing_else(vip)
    return model


def _vip_labels(task: TaskInfo, problems: list[Problem]) -> Iterator[tuple[TaskPort, str]]:
    """Every (port, VIP label value) of a task: port labels first, then task ``vip_portN`` labels."""
    seen: set[tuple[int, str]] = set()
    for index, port in enumerate(task.ports):
        for key, value in sorted(port.labels.items()):
            if is_vip_label_key(key):
                seen.add((index, value))
                yield port, value
    for key, value in sorted(task.labels.items()):
        index = task_label_port_index(key)
        if index is None:
            continue
        if index >= len(task.ports):
            problems.append(Problem(task.app_id, f"label {key}={value!r}: the task has no port {index}",
                                    task.task_id))
        elif (index, value) not in seen:
            yield task.ports[index], value


def _vip_for(view: ClusterView, model: VipModel, task: TaskInfo, protocol: str, spec: VipSpec) -> Vip | None:
    if spec.name is None:
        key = VipKey(spec.address or "", spec.port, protocol)
        return model.vips.setdefault(key, Vip(key))
    address = view.vip_addresses.get(vip_address_key(spec.name, task.framework))
    if address is None:
        return None   # the master has not allocated it yet; it appears with the next view
    key = VipKey(address, spec.port, protocol)
    vip = model.vips.setdefault(key, Vip(key, spec.name, task.framework, vip_dns_name(spec.name, task.framework)))
    if vip.name is None:     # an address VIP already claimed the named VIP's address
        vip.name, vip.framework, vip.dns_name = spec.name, task.framework, vip_dns_name(spec.name, task.framework)
        model.problems.append(Problem(task.app_id, f"named VIP {spec.name} shares {address}:{spec.port} "
                                                   "with an address VIP; serving the union"))
    return vip


def _backend(task: TaskInfo, port: TaskPort, problems: list[Problem], node_ip: str | None = None) -> Backend | None:
    if task.network == "bridge" and task.agent_ip == node_ip and task.ip_addresses and port.container_port:
        # On the task's own node a flow already translated for the VIP (NFQUEUE's DNAT takes
        # the flow's one NAT binding) never passes the host-port DNAT: go to the container.
        return Backend(task.ip_addresses[0], port.container_port)
    if task.network == "container":
        number = port.container_port or port.host_port
        if not task.ip_addresses or number is None:
            problems.append(Problem(task.app_id, "container-network task has no container IP/port yet",
                                    task.task_id))
            return None
        return Backend(task.ip_addresses[0], number)
    if port.host_port is None:
        problems.append(Problem(task.app_id, f"{task.network} task has no host port for its VIP",
                                task.task_id))
        return None
    return Backend(task.agent_ip, port.host_port)


def _state(task: TaskInfo, unreachable: set[str]) -> BackendState:
    if task.agent_id in unreachable:
        return "unreachable"
    if task.state == "TASK_KILLING":
        return "draining"
    if task.healthy is False:
        return "unhealthy"
    return "up"


def _keep_unreachable_if_nothing_else(vip: Vip) -> None:
    """Unreachable agents' tasks only serve when nothing reachable does (better than no backend)."""
    if any(b.state == "up" for b in vip.backends):
        return
    vip.backends = [BackendInfo(b.backend, "up", b.task_id, b.app_id, b.agent_id) if b.state == "unreachable"
                    else b for b in vip.backends]
