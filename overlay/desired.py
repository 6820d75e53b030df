"""Cluster view → the kernel state one agent's overlay should have. Pure: no kernel, no I/O.

For agent A with allocation (VTEP 44.128.0.1, subnet 9.0.0.0/24) on underlay 198.18.0.11::

    vtep1024  vxlan id 1024 dstport 64000 local 198.18.0.11 nolearning, 44.128.0.1/20, MAC 70:b3:d5:80:00:01
    m-dcos    bridge 9.0.0.1/25        d-dcos  bridge 9.0.0.129/25
    and per peer P (VTEP 44.128.0.3, MAC 70:b3:d5:80:00:03, subnet 9.0.2.0/24, underlay 198.18.0.13):
      neigh   44.128.0.3 lladdr 70:b3:d5:80:00:03 dev vtep1024 nud permanent
      fdb     70:b3:d5:80:00:03 dev vtep1024 dst 198.18.0.13 self permanent
      route   9.0.2.0/24 via 44.128.0.3 dev vtep1024 onlink
      route   198.18.0.13/32 via 44.128.0.3 dev vtep1024 onlink table 42
    rule      from 9.0.0.0/8 lookup 42

Table 42 sends container traffic for another agent's own address through the overlay, so the
peer sees (and answers) the container's address rather than a masqueraded one.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from cluster.view import AgentInfo, ClusterView, OverlayAllocation, OverlayConfig
from overlay.netlink import MAIN_TABLE, OVERLAY_TABLE, FdbEntry, Link, Neighbour, Route, Rule

M_DCOS = "m-dcos"
D_DCOS = "d-dcos"
BRIDGES = (M_DCOS, D_DCOS)
RULE_PRIORITY = 32000          # before the main table (32766)
VXLAN_OVERHEAD = 50            # outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14
MIN_IPV4_MTU = 68
ASSUMED_UNDERLAY_MTU = 1500
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


class OverlayNotReady(Exception):
    """This agent has no overlay allocation yet (not in the view, or the master gave it none)."""


@dataclass(frozen=True)
class MtuPlan:
    vtep: int
    container: int
    warning: str | None = None


def plan_mtu(config_mtu: int, underlay_mtu: int | None) -> MtuPlan:
    """Container MTU = min(configured, underlay − 50); never below the IPv4 minimum."""
    warning = None
    if underlay_mtu is None:
        underlay_mtu = ASSUMED_UNDERLAY_MTU
        warning = f"underlay MTU unknown; assuming {ASSUMED_UNDERLAY_MTU}"
    room = underlay_mtu - VXLAN_OVERHEAD
    container = max(MIN_IPV4_MTU, min(config_mtu, room))
    if container < config_mtu:
        warning = (f"underlay MTU {underlay_mtu} leaves {room} bytes for the overlay, less than the "
                   f"configured {config_mtu}; using MTU {container} on the bridges and containers")
    return MtuPlan(vtep=max(MIN_IPV4_MTU, room), container=container, warning=warning)


@dataclass(frozen=True)
class DesiredState:
    vtep: Link
    bridges: tuple[Link, ...]
    neighbours: frozenset[Neighbour]
    fdb: frozenset[FdbEntry]
    routes: frozenset[Route]
    rules: frozenset[Rule]
    overlay_subnet: str
    mtu: MtuPlan
    peers: tuple[str, ...]                                   # agent ids programmed
    skipped: dict[str, str] = field(default_factory=dict)   # agent id → why it is not programmed

    @property
    def links(self) -> tuple[Link, ...]:
        return (self.vtep, *self.bridges)


def _gateway(half: str) -> str:
    network = ipaddress.IPv4Network(half)
    return f"{network.network_address + 1}/{network.prefixlen}"


def bridge_mac(half: str) -> str:
    """A fixed, locally administered MAC for a bridge: 02 + its gateway address + 00. Left to the
    kernel, a bridge takes its lowest port's MAC, which changes as tasks come and go — and the
    CNI bridge plugin's CHECK compares the bridge MAC of its ADD result."""
    gateway = ipaddress.IPv4Network(half).network_address + 1
    return ":".join(f"{b:02x}" for b in (2, *gateway.packed, 0))


def _check_peer(agent: AgentInfo, config: OverlayConfig) -> str | None:
    """Why this peer's allocation cannot be programmed, or None."""
    a = agent.overlay
    try:
        ipaddress.IPv4Address(agent.ip)
        vtep = ipaddress.IPv4Address(a.vtep_ip)
        subnet = ipaddress.IPv4Network(a.subnet)
    except ValueError as exc:
        return f"bad address: {exc}"
    if vtep not in ipaddress.IPv4Network(config.vtep_subnet):
        return f"vtep_ip {a.vtep_ip} is outside {config.vtep_subnet}"
    if not subnet.subnet_of(ipaddress.IPv4Network(config.subnet)):
        return f"subnet {a.subnet} is outside {config.subnet}"
    if not _MAC.match(a.vtep_mac.lower()):
        return f"vtep_mac {a.vtep_mac!r} is not a MAC address"
    return None


def desired_state(view: ClusterView, agent_id: str, underlay_ip: str, underlay_mtu: int | None,
                  allocation: OverlayAllocation | None = None) -> DesiredState:
    """What ``agent_id`` should program. ``allocation`` (e.g. remembered from before a restart)
    is used when the view has none for this agent. Peers with unusable data are skipped and
    reported in ``skipped``; raises ``OverlayNotReady`` when this agent has no allocation."""
    config = view.overlay
    me = view.agent(agent_id)
    own = (me.overlay if me else None) or allocation
    if own is None:
        raise OverlayNotReady(f"agent {agent_id!r} has no overlay allocation in view {view.version}")
    vtep_prefixlen = ipaddress.IPv4Network(config.vtep_subnet).prefixlen
    mtu = plan_mtu(config.mtu, underlay_mtu)
    vtep = Link(name=config.vtep_name, kind="vxlan", mtu=mtu.vtep,
                addresses=frozenset({f"{own.vtep_ip}/{vtep_prefixlen}"}), mac=own.vtep_mac.lower(),
                vni=config.vni, port=config.port, local=underlay_ip, learning=False)
    bridges = tuple(Link(name=name, kind="bridge", mtu=mtu.container, addresses=frozenset({_gateway(half)}),
                         mac=bridge_mac(half))
                    for name, half in ((M_DCOS, own.m_dcos), (D_DCOS, own.d_dcos)))

    neighbours, fdb, routes = set(), set(), set()
    peers: list[str] = []
    skipped: dict[str, str] = {}
    taken = {"vtep": {own.vtep_ip: agent_id}, "subnet": {own.subnet: agent_id}, "ip": {underlay_ip: agent_id}}
    for agent in sorted(view.agents, key=lambda a: a.agent_id):
        if agent.agent_id == agent_id or agent.overlay is None:
            continue
        reason = _check_peer(agent, config)
        if reason is None:
            a = agent.overlay
            for kind, value in (("vtep", a.vtep_ip), ("subnet", a.subnet), ("ip", agent.ip)):
                if value in taken[kind]:
                    reason = f"{kind} {value} is also agent {taken[kind][value]!r}'s"
                    break
        if reason is not None:
            skipped[agent.agent_id] = reason
            continue
        a = agent.overlay
        for kind, value in (("vtep", a.vtep_ip), ("subnet", a.subnet), ("ip", agent.ip)):
            taken[kind][value] = agent.agent_id
        mac = a.vtep_mac.lower()
        neighbours.add(Neighbour(a.vtep_ip, mac))
        fdb.add(FdbEntry(mac, agent.ip))
        routes.add(Route(str(ipaddress.IPv4Network(a.subnet)), a.vtep_ip, MAIN_TABLE))
        routes.add(Route(f"{agent.ip}/32", a.vtep_ip, OVERLAY_TABLE))
        peers.append(agent.agent_id)

    overlay_subnet = str(ipaddress.IPv4Network(config.subnet))
    rules = frozenset({Rule(overlay_subnet, OVERLAY_TABLE, RULE_PRIORITY)})
    return DesiredState(vtep=vtep, bridges=bridges, neighbours=frozenset(neighbours), fdb=frozenset(fdb),
                        routes=frozenset(routes), rules=rules, overlay_subnet=overlay_subnet, mtu=mtu,
                        peers=tuple(peers), skipped=skipped)
