"""DnsService: the resolver as one object the agent wires (DESIGN.md §2).

The agent feeds it (``set_mesos_records``, ``set_vips``, ``set_masters``) whenever the cluster view
changes; each call swaps in freshly built zones and forgets every stored reply, so the next query
sees the change. Nothing here touches the kernel: the listen addresses must already be on a local
device (the agent puts them on ``lo``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from cluster.addresses import OVERLAY_SUBNET, RESOLVER_ADDRESSES
from spartan_dns.cache import ResponseCache
from spartan_dns.handlers import Chain, Forward, Guard, LocalZones
from spartan_dns.message import Reply
from spartan_dns.offload import ReplayOffload
from spartan_dns.server import ClientFilter, QueryServer, TcpListener, UdpListener
from spartan_dns.stats import DnsStats
from spartan_dns.upstream import (
    Forwarder,
    SocketTransport,
    Upstream,
    UpstreamHealth,
    UpstreamTransport,
    resolv_conf_upstreams,
)
from spartan_dns.zones import (
    DCOS,
    DCOS_TTL,
    L4LB,
    MESOS_DNS_NOERROR_TYPES,
    MESOS_MIRROR,
    MESOS_TTL,
    SPARTAN,
    THISDCOS,
    THISNODE,
    SoaNames,
    Zone,
    ZoneRecord,
    ZoneTable,
    address_rdata,
    dcos_records,
    mesos_records,
    vip_records,
)

log = logging.getLogger("navstar.dns")

DEFAULT_LISTEN = RESOLVER_ADDRESSES
DEFAULT_TASK_NETWORKS = (OVERLAY_SUBNET,)     # the dcos overlay: containers on m-dcos / d-dcos
LOOPBACK = ("127.0.0.0/8", "::1/128")
DCOS_SOA = SoaNames("ns.spartan", "support.mesosphere.com")


class DnsService:
    """The node's resolver: own zones, forwarding, cache, UDP+TCP listeners and their counters
    (``stats``; Prometheus reads them through ``spartan_dns.metrics``, HTTP through ``spartan_dns.api``).

    ``set_*`` are idempotent and may be called before or after ``start``; they raise ValueError on
    bad input and then change nothing. Call everything from the event loop's thread: the service is
    not thread-safe (one asyncio core per process)."""

    def __init__(self, listen: list[str] | tuple[str, ...] = DEFAULT_LISTEN, port: int = 53,
                 upstreams: list[str] | None = None,
                 forward_zones: dict[str, list[str]] | None = None,
                 node_ip: str = "127.0.0.1", mesos_domain: str = "mesos", *,
                 allowed_clients: Iterable[str] | None = None,
                 task_networks: Iterable[str] = DEFAULT_TASK_NETWORKS,
                 upstream_timeout: float = 1.0, overall_timeout: float = 2.5,
                 max_inflight: int = 1000, cache_size: int = 10_000, negative_ttl: int = 5,
                 max_stale: float = 86_400.0, tcp_idle_timeout: float = 10.0,
                 max_tcp_connections: int = 256, mesos_ttl: int = MESOS_TTL,
                 resolv_conf: str = "/etc/resolv.conf",
                 transport: UpstreamTransport | None = None,
                 replay_offload: ReplayOffload | None = None, offload_interfaces: Iterable[str] = ("lo",)):
        """``replay_offload``: a replay table outside the process (``bpf.dns_replay``) that answers
        own-zone queries arriving on ``offload_interfaces`` before they reach the sockets."""
        self.listen = [_ip("listen", a) for a in listen]
        if not self.listen:
            raise ValueError("listen: at least one address is needed")
        if not 0 <= port < 65536:
            raise ValueError(f"port: {port} is not 0-65535")
        self.port = port
        self.node_ip = _ip("node_ip", node_ip)
        self.mesos_domain = mesos_domain.strip(".").lower()
        if not self.mesos_domain:
            raise ValueError("mesos_domain must not be empty")
        self.mesos_ttl = mesos_ttl
        if upstreams is None:
            self.upstreams = resolv_conf_upstreams(resolv_conf, skip=self.listen)
        else:
            self.upstreams = [Upstream.parse(u) for u in upstreams]
        self.forward_zones = {}
        for zone, servers in (forward_zones or {}).items():
            name = zone.strip(".").lower()
            if not name or not servers:
                raise ValueError(f"forward_zones: {zone!r} needs a name and at least one upstream")
            self.forward_zones[name] = [Upstream.parse(s) for s in servers]
        networks = list(allowed_clients) if allowed_clients is not None else [
            *LOOPBACK, *task_networks, *(f"{a}/{32 if '.' in a else 128}" for a in {self.node_ip, *self.listen})]
        try:
            self.clients = ClientFilter(networks)
        except ValueError as exc:
            raise ValueError(f"allowed_clients: {exc}") from None

        self.stats = DnsStats()
        self.cache = ResponseCache(max_entries=cache_size, negative_ttl=negative_ttl, max_stale=max_stale)
        self.health = UpstreamHealth()
        self.forwarder = Forwarder(transport or SocketTransport(), self.health,
                                   upstream_timeout=upstream_timeout, overall_timeout=overall_timeout,
                                   on_failure=self.stats.upstream_failure, on_query=self.stats.upstream_query)
        self.zones = ZoneTable()
        self.forward = Forward(self.forwarder, self.cache, self.stats, self.upstreams, self.forward_zones,
                               max_inflight=max_inflight)
        self.chain = Chain([Guard(), LocalZones(self.zones, self.forward_zones), self.forward])
        self.server = QueryServer(self.chain, self.stats, self.clients)
        self.replay_offload = replay_offload
        self.offload_interfaces = list(offload_interfaces)
        self._offload_beat: asyncio.Task | None = None
        self._stopped = False
        self.tcp_idle_timeout = tcp_idle_timeout
        self.max_tcp_connections = max_tcp_connections
        self._udp: list[UdpListener] = []
        self._tcp: list[TcpListener] = []
        self._serial = 0
        self._mesos: list[ZoneRecord] = []
        self._leader: str | None = None
        self._masters: list[str] = []
        self._recordset = None
        self._build_static_zones()
        self._build_mesos_zones()
        self._put(Zone(L4LB, [], ttl=DCOS_TTL, soa=DCOS_SOA, serial=self._next_serial()))
        if not self.upstreams:
            log.warning("no upstream resolvers: names outside the node's zones get SERVFAIL")

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        """Binds UDP and TCP on every listen address. Raises OSError naming the address on failure."""
        try:
            for address in self.listen:
                udp = UdpListener(self.server, address, self.port)
                tcp = TcpListener(self.server, address, self.port, self.tcp_idle_timeout,
                                  self.max_tcp_connections)
                try:
                    udp.open()
                    self._udp.append(udp)
                    await tcp.open()
                    self._tcp.append(tcp)
                except OSError as exc:
                    raise OSError(exc.errno, f"cannot listen on {address} port {self.port}: {exc.strerror}") from exc
            if self.replay_offload is not None:
                self._start_offload(self.replay_offload)
        except BaseException:
            await self.stop()
            raise
        log.info("DNS on %s port %d (UDP+TCP), upstreams %s%s", ", ".join(self.listen), self.port,
                 ", ".join(map(str, self.upstreams)) or "none",
                 f"; own-zone answers also from the kernel on {', '.join(self.offload_interfaces)}"
                 if self.replay_offload is not None else "")

    def use_offload(self, offload: ReplayOffload) -> None:
        """Starts answering through ``offload`` now (it may take a while to build: the service
        serves meanwhile). Before ``start``: from ``start`` on; after ``stop``: closed at once."""
        if self.server.offload is not None:
            offload.close()
            raise ValueError("replay_offload: the service already has one")
        if not self._udp:
            if self._stopped:
                offload.close()
            else:
                self.replay_offload = offload
            return
        try:
            self._start_offload(offload)
        except BaseException:
            self.server.offload = None
            offload.close()
            raise

    def _start_offload(self, offload: ReplayOffload) -> None:
        offload.listen([udp.address for udp in self._udp])
        offload.clients([str(network) for network in self.clients.networks])
        offload.heartbeat()
        self.server.offload = offload           # set first: stop() detaches whatever attach did
        offload.attach(self.offload_interfaces)
        self._offload_beat = asyncio.get_running_loop().create_task(self._beat(offload))

    async def _beat(self, offload: ReplayOffload) -> None:
        """Keeps the offload answering while this loop runs, and counts what it answered."""
        while self.server.offload is offload:
            try:
                offload.heartbeat()
                self.server.count_offloaded()
            except OSError as exc:
                self.server.drop_offload(f"heartbeat: {exc}")
                return
            await asyncio.sleep(1.0)

    async def stop(self) -> None:
        """Closes every listener; safe to call twice."""
        self._stopped = True
        if self._offload_beat is not None:
            self._offload_beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._offload_beat
            self._offload_beat = None
        if self.server.offload is not None:
            self.server.count_offloaded()
            self.server.offload.close()
            self.server.offload = None
        for listener in self._udp + self._tcp:
            await listener.close()
        self._udp, self._tcp = [], []

    # -- inputs from the cluster view ---------------------------------------------------------
    def set_mesos_records(self, recordset) -> None:
        """Replaces the ``mesos`` zone (and its mirror and the dcos zone) with generated records."""
        self.install_mesos_zones(self.build_mesos_zones(recordset))

    def build_mesos_zones(self, recordset) -> MesosZones:
        """The zones ``set_mesos_records`` would put in, built without touching what is served:
        safe on a worker thread (10,000 tasks take most of a second), then ``install_mesos_zones``
        on the loop."""
        with collector_paused():
            records = mesos_records(recordset)
            leader, masters = self._leader, list(self._masters)
            serial = max(self._serial + 1, int(time.time()))
            return MesosZones(records, self._mesos_zones(records, serial, leader, masters), leader, masters, serial)

    def install_mesos_zones(self, built: MesosZones) -> None:
        """Serves zones from ``build_mesos_zones`` (on the loop that answers queries)."""
        self._mesos = built.records
        self._serial = max(self._serial, built.serial)
        for zone in built.zones:
            self._put(zone)
        if (built.leader, built.masters) != (self._leader, self._masters):
            self.set_masters(self._leader or "", self._masters)   # the masters changed meanwhile

    def set_vips(self, names: dict[str, str]) -> None:
        """Replaces the VIP names (``web.marathon.l4lb.thisdcos.directory`` → ``11.0.0.1``)."""
        self._put(Zone(L4LB, vip_records(names), ttl=DCOS_TTL, soa=DCOS_SOA, serial=self._next_serial()))

    def set_masters(self, leader_ip: str, master_ips: list[str]) -> None:
        """``leader.`` and ``master.dcos.thisdcos.directory``."""
        leader = _ip("leader_ip", leader_ip) if leader_ip else None
        masters = [_ip("master_ips", ip) for ip in master_ips]
        self._leader, self._masters = leader, masters
        self._put(Zone(DCOS, dcos_records(self._mesos, self.mesos_domain, leader, masters), ttl=DCOS_TTL,
                       soa=DCOS_SOA, serial=self._next_serial()))

    # -- queries for the API and tools --------------------------------------------------------
    def recordset(self):
        """Every record of the node's zones as a ``spartan_dns.records.RecordSet`` (for the HTTP API)."""
        if self._recordset is None:
            from dnslib import QTYPE

            from spartan_dns.records import Record, RecordSet

            records = []
            for zone in sorted(self.zones.zones(), key=lambda z: z.origin):
                for name, rtype, rdata in zone.names():
                    value = f"{rdata.target}:{rdata.port}" if rtype == QTYPE.SRV else str(rdata)
                    records.append(Record(name + ".", QTYPE[rtype], value))
            self._recordset = RecordSet(tuple(records), domain=self.mesos_domain)
        return self._recordset

    def lookup(self, name: str, qtype: int) -> Reply | None:
        """The node's own answer for ``name`` (None if no own zone holds it)."""
        from dnslib import DNSLabel

        bare = name.strip(".").lower()
        zone = self.zones.find(bare)
        if zone is None:
            return None
        return zone.lookup(DNSLabel(bare + "."), bare, qtype)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """Where the UDP listeners are bound (useful with port 0)."""
        return [udp.address for udp in self._udp]

    # -- zone building ------------------------------------------------------------------------
    def _next_serial(self) -> int:
        self._serial = max(self._serial + 1, int(time.time()))
        return self._serial

    def _put(self, zone: Zone) -> None:
        self.zones.put(zone)
        self._recordset = None
        self.stats.zone_records[zone.origin] = zone.record_count
        self.server.forget()

    def _build_static_zones(self) -> None:
        serial = self._next_serial()
        self._put(Zone(THISDCOS, [], ttl=DCOS_TTL, soa=DCOS_SOA, serial=serial))
        self._put(Zone(THISNODE, [(THISNODE, *address_rdata(self.node_ip))], ttl=DCOS_TTL, soa=DCOS_SOA,
                       serial=serial))
        self._put(Zone(SPARTAN, [(f"ready.{SPARTAN}", *address_rdata("127.0.0.1")),
                                 (f"ns.{SPARTAN}", *address_rdata(self.listen[0]))],
                       ttl=DCOS_TTL, soa=DCOS_SOA, serial=serial))

    def _build_mesos_zones(self) -> None:
        for zone in self._mesos_zones(self._mesos, self._next_serial(), self._leader, self._masters):
            self._put(zone)

    def _mesos_zones(self, generated: list[ZoneRecord], serial: int, leader: str | None,
                     masters: list[str]) -> list[Zone]:
        """The ``mesos`` zone, its ``mesos.thisdcos.directory`` mirror and the ``dcos`` zone (pure)."""
        domain = self.mesos_domain
        soa = SoaNames(f"ns1.{domain}", f"root.ns1.{domain}")
        records = generated
        if not any(name.rstrip(".").lower() == soa.mname for name, _, _ in records):
            records = [*records, (soa.mname, *address_rdata(self.listen[0]))]   # Mesos-DNS: ns1 → listener
        mesos = Zone(domain, records, ttl=self.mesos_ttl, soa=soa, serial=serial, ns_in_authority=True,
                     noerror_types=MESOS_DNS_NOERROR_TYPES)
        zones = [mesos]
        if domain != MESOS_MIRROR and not domain.endswith("." + MESOS_MIRROR):
            mirror_soa = SoaNames(f"ns1.{MESOS_MIRROR}", f"root.ns1.{MESOS_MIRROR}")
            zones.append(Zone.mirror(mesos, MESOS_MIRROR, soa=mirror_soa, serial=serial, ns_in_authority=True))
        zones.append(Zone(DCOS, dcos_records(generated, domain, leader, masters), ttl=DCOS_TTL,
                          soa=DCOS_SOA, serial=serial))
        return zones


@dataclass(frozen=True)
class MesosZones:
    """Zones built from one record set, and the inputs they were built with."""
    records: list[ZoneRecord]
    zones: list[Zone]
    leader: str | None
    masters: list[str]
    serial: int


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Building zones allocates a few objects per record and frees none: the cyclic collector
    would walk the whole heap again and again (10,000 tasks: 2.3 s with it, 1.0 s without)."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


def _ip(field: str, value: str) -> str:
    try:
        return str(ipaddress.ip_address(str(value).strip()))
    except ValueError:
        raise ValueError(f"{field}: {value!r} is not an IP address") from None
