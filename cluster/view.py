"""The cluster view: what every agent watches (DESIGN.md §2).

The master is its only writer; every change bumps ``version``. Agents fetch it with
``GET :5050/v1/view?since=<version>&wait=<seconds>`` (long-poll: answers at once when the master's
version is newer than ``since``, otherwise when it changes or ``wait`` runs out) and keep serving
the last view they had while the master is unreachable.

This module is the contract between the control plane and the node components (overlay,
minuteman, spartan_dns). Fields are only ever added, never renamed.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from cluster import addresses
from cluster.tasks import TaskState

__all__ = ["AgentInfo", "ClusterView", "FrameworkInfo", "OverlayAllocation", "OverlayConfig", "TaskInfo", "TaskPort", "TaskState",
           "protocols_of"]


class OverlayConfig(BaseModel):
    """The one overlay network, ``dcos``, as DC/OS configured it."""

    name: str = addresses.OVERLAY_NAME
    subnet: str = addresses.OVERLAY_SUBNET
    agent_prefixlen: int = addresses.OVERLAY_AGENT_PREFIXLEN
    vtep_subnet: str = addresses.VTEP_SUBNET
    vtep_name: str = addresses.VTEP_DEVICE
    vni: int = Field(default=addresses.VTEP_VNI, ge=1, le=(1 << 24) - 1)
    port: int = Field(default=addresses.VTEP_PORT, ge=1, le=65535)
    mtu: int = Field(default=addresses.CONTAINER_MTU, ge=576, le=9000)


class OverlayAllocation(BaseModel):
    """One agent's share of the overlay, allocated once by the master."""

    vtep_ip: str            # from 44.128.0.0/20
    vtep_mac: str           # 70:b3:d5 + low 24 bits of vtep_ip
    subnet: str             # the agent's /24 from 9.0.0.0/8
    m_dcos: str             # first /25: Mesos containers
    d_dcos: str             # second /25: Docker-style containers


class AgentInfo(BaseModel):
    agent_id: str
    hostname: str
    ip: str                 # underlay IP
    port: int = addresses.AGENT_API_PORT     # the agent's API (Mesos' ``slave(1)@ip:port``)
    reachable: bool = True
    overlay: OverlayAllocation | None = None
    networks: list[str] | None = None        # its CNI networks (None: not reported)


class TaskPort(BaseModel):
    """One port of a task, with its Marathon port definition/mapping labels (``VIP_0``…)."""

    host_port: int | None = None       # on the agent's IP (HOST and BRIDGE networking)
    container_port: int | None = None  # on the container IP (container networks)
    protocol: Literal["tcp", "udp", "udp,tcp"] = "tcp"    # "udp,tcp": one port number, both protocols
    name: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)

    @property
    def protocols(self) -> tuple[str, ...]:
        """Each protocol the port serves: a VIP, a DNS service and a port mapping for each."""
        return protocols_of(self.protocol)


def protocols_of(protocol: str) -> tuple[str, ...]:
    """Marathon's port protocol (``tcp``, ``udp``, ``udp,tcp`` or ``tcp,udp``) as single protocols."""
    return ("tcp", "udp") if "," in protocol else (protocol,)


class TaskInfo(BaseModel):
    task_id: str
    app_id: str                         # Marathon id, e.g. "/shop/web"
    name: str                           # Mesos task name, e.g. "web.shop"
    framework: str = "marathon"
    agent_id: str
    agent_ip: str
    state: TaskState
    healthy: bool | None = None         # None: no health checks (or not yet known)
    network: Literal["host", "container", "bridge"] = "host"
    ip_addresses: list[str] = Field(default_factory=list)   # container IPs, if any
    ports: list[TaskPort] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)    # task labels (e.g. vip_port0)


class FrameworkInfo(BaseModel):
    """A framework whose tasks are in the view (Mesos-DNS names them ``<task>.<framework>.mesos``)."""

    framework_id: str
    name: str = "marathon"
    hostname: str                       # where its scheduler runs
    ip: str
    port: int = addresses.MARATHON_PORT


class ClusterView(BaseModel):
    """Everything a node needs: overlay peers, VIP backends and the data its DNS records come
    from (Mesos-DNS's rules applied to agents, frameworks and tasks), in one document."""

    version: int = 0
    master_ip: str = "127.0.0.1"
    master_port: int = addresses.MESOS_MASTER_PORT
    frameworks: list[FrameworkInfo] = Field(default_factory=list)
    agents: list[AgentInfo] = Field(default_factory=list)
    tasks: list[TaskInfo] = Field(default_factory=list)
    # Named VIPs → allocated address from 11.0.0.0/8, keyed "<framework>:<label>" (e.g. "marathon:/web").
    vip_addresses: dict[str, str] = Field(default_factory=dict)
    overlay: OverlayConfig = Field(default_factory=OverlayConfig)

    def agent(self, agent_id: str) -> AgentInfo | None:
        return next((a for a in self.agents if a.agent_id == agent_id), None)
