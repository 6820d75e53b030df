"""Overlay address allocation: pure allocators, no kernel, persisted as plain dicts.

``OverlayIpam`` runs on the master: per agent a VTEP address from ``44.128.0.0/20``, its MAC
(``70:b3:d5`` + the low 24 bits of the VTEP address) and a ``/24`` from ``9.0.0.0/8`` split into
``m-dcos`` (first half) and ``d-dcos`` (second half). ``ContainerIpam`` runs on each agent and
hands out container addresses from one of those halves.

Both never give one address to two owners, return the same answer when asked again for the same
owner, raise ``AddressPoolExhausted`` (with the pool named) when nothing is free, and survive a
restart through ``snapshot()`` / ``restore()``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import Any

from cluster.addresses import VTEP_MAC_PREFIX
from cluster.view import OverlayAllocation, OverlayConfig

SNAPSHOT_VERSION = 1
DEFAULT_MAC_PREFIX = VTEP_MAC_PREFIX


class IpamError(ValueError):
    """Bad configuration or a snapshot that does not fit it; the message names the field."""


class AddressPoolExhausted(IpamError):
    """Every address of a pool is in use; nothing was allocated."""


def vtep_mac(vtep_ip: str, prefix: str = DEFAULT_MAC_PREFIX) -> str:
    """The VTEP MAC DC/OS used: a 3-byte OUI prefix + the low 24 bits of the VTEP address."""
    low = int(ipaddress.IPv4Address(vtep_ip)) & 0xFFFFFF
    return f"{prefix}:{low >> 16:02x}:{(low >> 8) & 0xFF:02x}:{low & 0xFF:02x}"


def split_agent_subnet(subnet: str) -> tuple[str, str]:
    """An agent's subnet → (m-dcos, d-dcos): its first and second half."""
    first, second = ipaddress.IPv4Network(subnet).subnets(prefixlen_diff=1)
    return str(first), str(second)


def _network(value: str, field: str) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(value)
    except ValueError as exc:
        raise IpamError(f"{field}: {value!r} is not an IPv4 network ({exc})") from None


def _check_mac_prefix(prefix: str) -> str:
    parts = prefix.split(":")
    if len(parts) != 3 or not all(len(p) == 2 and all(c in "0123456789abcdefABCDEF" for c in p) for p in parts):
        raise IpamError(f"mac_prefix: {prefix!r} must be three hex bytes like '70:b3:d5'")
    if int(parts[0], 16) & 1:
        raise IpamError(f"mac_prefix: {prefix!r} is a multicast prefix (lowest bit of the first byte set)")
    return prefix.lower()


class OverlayIpam:
    """Per-agent overlay allocations. Not thread-safe: the master calls it from one loop.

    ``allocate`` is idempotent per agent id (an agent that comes back keeps its allocation);
    ``release`` returns the agent's addresses to the pools (unknown ids are ignored); both raise
    ``AddressPoolExhausted`` / never reuse an address still held by another agent.
    """

    def __init__(self, config: OverlayConfig | None = None, *, mac_prefix: str = DEFAULT_MAC_PREFIX) -> None:
        self.config = config or OverlayConfig()
        self.mac_prefix = _check_mac_prefix(mac_prefix)
        self._vtep_pool = _network(self.config.vtep_subnet, "vtep_subnet")
        self._subnet_pool = _network(self.config.subnet, "subnet")
        if self._vtep_pool.prefixlen < 8:
            # Only the low 24 bits go into the MAC: a bigger range would give two VTEPs one MAC.
            raise IpamError(f"vtep_subnet: {self.config.vtep_subnet} is larger than a /8; VTEP MACs would collide")
        if self._vtep_pool.num_addresses < 4:
            raise IpamError(f"vtep_subnet: {self.config.vtep_subnet} has no room for VTEP addresses")
        prefixlen = self.config.agent_prefixlen
        if not self._subnet_pool.prefixlen < prefixlen <= 29:
            raise IpamError(
                f"agent_prefixlen: {prefixlen} must be longer than the overlay subnet's "
                f"/{self._subnet_pool.prefixlen} and at most 29 (each half needs a gateway and a container)")
        self._agents: dict[str, OverlayAllocation] = {}
        self._vteps_used: dict[str, str] = {}      # vtep ip → agent id
        self._subnets_used: dict[str, str] = {}    # agent subnet → agent id

    # -- queries
    def get(self, agent_id: str) -> OverlayAllocation | None:
        return self._agents.get(agent_id)

    @property
    def allocations(self) -> dict[str, OverlayAllocation]:
        return dict(self._agents)

    @property
    def capacity(self) -> int:
        """How many agents the smaller of the two pools can hold."""
        vteps = self._vtep_pool.num_addresses - 2
        subnets = 1 << (self.config.agent_prefixlen - self._subnet_pool.prefixlen)
        return min(vteps, subnets)

    # -- changes
    def allocate(self, agent_id: str) -> OverlayAllocation:
        """The agent's allocation, made on first call; the same one on every later call."""
        if not agent_id:
            raise IpamError("agent_id: must not be empty")
        known = self._agents.get(agent_id)
        if known is not None:
            return known
        vtep_ip = self._first_free(self._vtep_hosts(), self._vteps_used, "vtep_subnet", self.config.vtep_subnet)
        subnet = self._first_free(self._agent_subnets(), self._subnets_used, "subnet", self.config.subnet)
        m_dcos, d_dcos = split_agent_subnet(subnet)
        allocation = OverlayAllocation(vtep_ip=vtep_ip, vtep_mac=vtep_mac(vtep_ip, self.mac_prefix),
                                       subnet=subnet, m_dcos=m_dcos, d_dcos=d_dcos)
        self._hold(agent_id, allocation)
        return allocation

    def release(self, agent_id: str) -> None:
        """The agent is gone for good: its addresses become free. Unknown ids are ignored."""
        allocation = self._agents.pop(agent_id, None)
        if allocation is not None:
            self._vteps_used.pop(allocation.vtep_ip, None)
            self._subnets_used.pop(allocation.subnet, None)

    # -- persistence
    def snapshot(self) -> dict[str, Any]:
        return {
            "version": SNAPSHOT_VERSION,
            "config": self.config.model_dump(),
            "mac_prefix": self.mac_prefix,
            "agents": {agent_id: a.model_dump() for agent_id, a in sorted(self._agents.items())},
        }

    @classmethod
    def restore(cls, data: dict[str, Any], config: OverlayConfig | None = None) -> OverlayIpam:
        """Rebuild from ``snapshot()``. ``config`` (default: the one in the snapshot) must contain
        every restored allocation; a conflict raises ``IpamError`` naming the agent and field."""
        if not isinstance(data, dict) or data.get("version") != SNAPSHOT_VERSION:
            raise IpamError(f"snapshot: expected a dict with version {SNAPSHOT_VERSION}")
        if config is None:
            config = OverlayConfig(**data.get("config", {}))
        ipam = cls(config, mac_prefix=data.get("mac_prefix", DEFAULT_MAC_PREFIX))
        agents = data.get("agents", {})
        if not isinstance(agents, dict):
            raise IpamError("snapshot.agents: expected a mapping of agent id to allocation")
        for agent_id, raw in agents.items():
            try:
                allocation = OverlayAllocation(**raw)
            except (TypeError, ValueError) as exc:
                raise IpamError(f"snapshot.agents[{agent_id!r}]: {exc}") from None
            ipam._check_fits(agent_id, allocation)
            ipam._hold(agent_id, allocation)
        return ipam

    # -- internals
    def _vtep_hosts(self) -> Iterator[str]:
        return (str(ip) for ip in self._vtep_pool.hosts())

    def _agent_subnets(self) -> Iterator[str]:
        return (str(net) for net in self._subnet_pool.subnets(new_prefix=self.config.agent_prefixlen))

    @staticmethod
    def _first_free(candidates: Iterator[str], used: dict[str, str], field: str, pool: str) -> str:
        for candidate in candidates:
            if candidate not in used:
                return candidate
        raise AddressPoolExhausted(f"{field}: every address of {pool} is allocated ({len(used)} agents)")

    def _hold(self, agent_id: str, allocation: OverlayAllocation) -> None:
        self._agents[agent_id] = allocation
        self._vteps_used[allocation.vtep_ip] = agent_id
        self._subnets_used[allocation.subnet] = agent_id

    def _check_fits(self, agent_id: str, a: OverlayAllocation) -> None:
        where = f"snapshot.agents[{agent_id!r}]"
        try:
            vtep = ipaddress.IPv4Address(a.vtep_ip)
            subnet = ipaddress.IPv4Network(a.subnet)
        except ValueError as exc:
            raise IpamError(f"{where}: {exc}") from None
        if vtep not in self._vtep_pool:
            raise IpamError(f"{where}.vtep_ip: {a.vtep_ip} is outside vtep_subnet {self._vtep_pool}")
        if not subnet.subnet_of(self._subnet_pool) or subnet.prefixlen != self.config.agent_prefixlen:
            raise IpamError(f"{where}.subnet: {a.subnet} is not a /{self.config.agent_prefixlen} of {self._subnet_pool}")
        if (a.m_dcos, a.d_dcos) != split_agent_subnet(a.subnet):
            raise IpamError(f"{where}: m_dcos/d_dcos must be the two halves of {a.subnet}")
        if a.vtep_mac.lower() != vtep_mac(a.vtep_ip, self.mac_prefix):
            raise IpamError(f"{where}.vtep_mac: {a.vtep_mac} does not match {a.vtep_ip}")
        for value, used, field in ((a.vtep_ip, self._vteps_used, "vtep_ip"), (a.subnet, self._subnets_used, "subnet")):
            if value in used:
                raise IpamError(f"{where}.{field}: {value} is also held by agent {used[value]!r}")


class ContainerIpam:
    """Container addresses from one pool (an agent's ``m-dcos`` or ``d-dcos`` half).

    The network address, the first host (the bridge's gateway) and the broadcast address are never
    handed out. Addresses are handed out round-robin, so a released address is reused as late as
    possible (stale DNS records and conntrack entries for it have time to go). ``allocate`` is
    idempotent per owner; ``release`` of an unknown owner does nothing.
    """

    def __init__(self, pool: str, *, name: str | None = None) -> None:
        self.pool = _network(pool, "pool")
        if self.pool.num_addresses < 4:
            raise IpamError(f"pool: {pool} leaves no address for a container after the gateway")
        self.name = name or str(self.pool)
        self.gateway = str(self.pool.network_address + 1)
        self._first = int(self.pool.network_address) + 2
        self._last = int(self.pool.broadcast_address) - 1
        self._next = self._first
        self._owners: dict[str, str] = {}   # owner → address
        self._used: dict[str, str] = {}     # address → owner

    @property
    def size(self) -> int:
        return self._last - self._first + 1

    @property
    def in_use(self) -> dict[str, str]:
        """owner → address."""
        return dict(self._owners)

    def get(self, owner: str) -> str | None:
        return self._owners.get(owner)

    def allocate(self, owner: str) -> str:
        if not owner:
            raise IpamError("owner: must not be empty")
        known = self._owners.get(owner)
        if known is not None:
            return known
        if len(self._used) >= self.size:
            raise AddressPoolExhausted(
                f"{self.name} ({self.pool}) has no free address: all {self.size} are in use")
        candidate = self._next
        while str(ipaddress.IPv4Address(candidate)) in self._used:
            candidate = self._first if candidate >= self._last else candidate + 1
        address = str(ipaddress.IPv4Address(candidate))
        self._next = self._first if candidate >= self._last else candidate + 1
        self._owners[owner] = address
        self._used[address] = owner
        return address

    def release(self, owner: str) -> None:
        address = self._owners.pop(owner, None)
        if address is not None:
            self._used.pop(address, None)

    def snapshot(self) -> dict[str, Any]:
        return {"pool": str(self.pool), "name": self.name, "next": str(ipaddress.IPv4Address(self._next)),
                "owners": dict(sorted(self._owners.items()))}

    @classmethod
    def restore(cls, data: dict[str, Any]) -> ContainerIpam:
        if not isinstance(data, dict) or "pool" not in data:
            raise IpamError("snapshot: expected a dict with 'pool'")
        ipam = cls(data["pool"], name=data.get("name"))
        for owner, address in (data.get("owners") or {}).items():
            try:
                ip = ipaddress.IPv4Address(address)
            except ValueError:
                raise IpamError(f"snapshot.owners[{owner!r}]: {address!r} is not an IPv4 address") from None
            if not ipam._first <= int(ip) <= ipam._last:
                raise IpamError(f"snapshot.owners[{owner!r}]: {address} is not a container address of {ipam.pool}")
            if address in ipam._used:
                raise IpamError(f"snapshot.owners[{owner!r}]: {address} is also held by {ipam._used[address]!r}")
            ipam._owners[owner] = address
            ipam._used[address] = owner
        try:
            following = int(ipaddress.IPv4Address(data.get("next", str(ipaddress.IPv4Address(ipam._first)))))
        except ValueError:
            following = ipam._first
        ipam._next = following if ipam._first <= following <= ipam._last else ipam._first
        return ipam
