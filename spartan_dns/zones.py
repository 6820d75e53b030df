"""The node's own zones, answered authoritatively from memory.

Each :class:`Zone` is an immutable index built once per change of its inputs (records from the
Mesos-DNS generator, the programmed VIP names, the masters); lookups never build anything but the
reply's RRs. A name that exists with other types (or only has names below it) is NODATA, a name
that does not exist is NXDOMAIN; both carry the zone's SOA in the authority section (RFC 2308).
Mesos-DNS answers an absent name asked for SRV, SOA or NS with NOERROR (and the SOA), not
NXDOMAIN; its zone is built with ``MESOS_DNS_NOERROR_TYPES`` to do the same.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from dnslib import AAAA, NS, QTYPE, RR, SOA, SRV, A, DNSLabel

from spartan_dns.message import NOERROR, NXDOMAIN, Reply

log = logging.getLogger("navstar.dns.zones")

THISDCOS = "thisdcos.directory"
L4LB = "l4lb.thisdcos.directory"
DCOS = "dcos.thisdcos.directory"
MESOS_MIRROR = "mesos.thisdcos.directory"
THISNODE = "thisnode.thisdcos.directory"
SPARTAN = "spartan"

DCOS_TTL = 5            # dcos-net's own zones
MESOS_TTL = 60          # Mesos-DNS's default
SOA_REFRESH, SOA_RETRY, SOA_EXPIRE = 60, 600, 86400

T_A, T_AAAA, T_NS, T_SOA, T_SRV, T_ANY = QTYPE.A, QTYPE.AAAA, QTYPE.NS, QTYPE.SOA, QTYPE.SRV, QTYPE.ANY

# Mesos-DNS's handleEmpty: an absent name asked for these types is NOERROR, for others NXDOMAIN.
MESOS_DNS_NOERROR_TYPES = frozenset({T_SRV, T_SOA, T_NS})

ZoneRecord = tuple[str, int, object]     # (name without trailing dot, QTYPE, dnslib rdata)


@dataclass(frozen=True)
class SoaNames:
    mname: str          # primary name server
    rname: str          # mailbox, as a domain name


class Zone:
    """One authoritative zone. Thread-free and immutable once built: swap a new one in to change it."""

    def __init__(self, origin: str, records: Iterable[ZoneRecord], *, ttl: int, soa: SoaNames,
                 serial: int, ns_in_authority: bool = False, noerror_types: frozenset[int] = frozenset()):
        """``noerror_types``: query types for which an absent name is NOERROR (no answer, the
        SOA in authority) rather than NXDOMAIN."""
        self.origin = origin.rstrip(".").lower()
        self.noerror_types = noerror_types
        self.ttl = ttl
        self.ns_in_authority = ns_in_authority
        self._rrsets: dict[str, dict[int, list]] = {}
        self._exists: set[str] = {self.origin}
        self.record_count = 0
        suffix = "." + self.origin
        for name, rtype, rdata in records:
            name = name.rstrip(".").lower()
            if name != self.origin and not name.endswith(suffix):
                log.warning("record %s outside zone %s dropped", name, self.origin)
                continue
            rdatas = self._rrsets.setdefault(name, {}).setdefault(rtype, [])
            if rdata not in rdatas:
                rdatas.append(rdata)
                self.record_count += 1
            while name != self.origin and name not in self._exists:
                self._exists.add(name)
                name = name.partition(".")[2]
        apex = self._rrsets.setdefault(self.origin, {})
        self._soa_rdata = SOA(soa.mname, soa.rname, (serial, SOA_REFRESH, SOA_RETRY, SOA_EXPIRE, ttl))
        apex[T_SOA] = [self._soa_rdata]
        apex[T_NS] = [NS(soa.mname)]
        self._soa_rr = RR(self.origin + ".", T_SOA, ttl=ttl, rdata=self._soa_rdata)
        self._ns_rr = RR(self.origin + ".", T_NS, ttl=ttl, rdata=apex[T_NS][0])

    def names(self) -> Iterator[tuple[str, int, object]]:
        """Every record (name, QTYPE, rdata), apex SOA/NS excluded."""
        for name, rrsets in self._rrsets.items():
            for rtype, rdatas in rrsets.items():
                if name == self.origin and rtype in (T_SOA, T_NS):
                    continue
                for rdata in rdatas:
                    yield name, rtype, rdata

    def rdatas(self, name: str, rtype: int) -> list:
        return self._rrsets.get(name, {}).get(rtype, [])

    def lookup(self, qname: DNSLabel, name: str, qtype: int) -> Reply:
        """Answers ``qtype`` for ``name`` (lowercase); owner names keep the case the client asked in."""
        rrsets = self._rrsets.get(name)
        if rrsets is None:
            return self._negative(NOERROR if name in self._exists or qtype in self.noerror_types else NXDOMAIN)
        if qtype == T_ANY:
            found = [(rtype, rdata) for rtype, rdatas in rrsets.items() for rdata in rdatas]
        else:
            found = [(qtype, rdata) for rdata in rrsets.get(qtype, ())]
        if not found:
            return self._negative(NOERROR)
        answers = [RR(qname, rtype, ttl=self.ttl, rdata=rdata) for rtype, rdata in found]
        additional = self._glue(rdata.target for rtype, rdata in found if rtype == T_SRV)
        if qtype == T_NS:
            additional += self._glue(rdata.label for rtype, rdata in found if rtype == T_NS)
        authority = [self._ns_rr] if self.ns_in_authority and qtype not in (T_NS, T_ANY) else []
        return Reply(NOERROR, answers, authority, additional, authoritative=True, zone=self.origin,
                     rotate=len(answers) > 1)

    def _negative(self, rcode: int) -> Reply:
        return Reply(rcode, authority=[self._soa_rr], authoritative=True, zone=self.origin)

    def _glue(self, targets: Iterable[DNSLabel]) -> list[RR]:
        glue: list[RR] = []
        seen: set[str] = set()
        for target in targets:
            host = str(target).rstrip(".").lower()
            if host in seen:
                continue
            seen.add(host)
            for rtype in (T_A, T_AAAA):
                glue += [RR(host + ".", rtype, ttl=self.ttl, rdata=rdata) for rdata in self.rdatas(host, rtype)]
        return glue


class ZoneTable:
    """The zones this node answers for; the most specific zone containing a name wins."""

    def __init__(self) -> None:
        self._zones: dict[str, Zone] = {}

    def put(self, zone: Zone) -> None:
        self._zones[zone.origin] = zone

    def get(self, origin: str) -> Zone | None:
        return self._zones.get(origin)

    def zones(self) -> list[Zone]:
        return list(self._zones.values())

    def find(self, name: str) -> Zone | None:
        zones = self._zones
        while True:
            zone = zones.get(name)
            if zone is not None:
                return zone
            if "." not in name:
                return None
            name = name.partition(".")[2]


# -- building records ------------------------------------------------------------------------
def address_rdata(value: str) -> tuple[int, object]:
    """``"10.0.0.1"`` → (A, rdata); ``"fd01::1"`` → (AAAA, rdata). Raises ValueError otherwise."""
    address = ipaddress.ip_address(value.strip())
    if address.version == 4:
        return T_A, A(str(address))
    return T_AAAA, AAAA(str(address))


def _iter_generated(recordset) -> Iterator[tuple[str, str, str]]:
    """(name, rtype, value) from a ``spartan_dns.records.RecordSet`` (or any iterable of records)."""
    records = getattr(recordset, "records", recordset)
    if callable(records):
        records = records()
    for record in records:
        yield record.name, record.rtype, record.value


def mesos_records(recordset) -> list[ZoneRecord]:
    """The generator's records as zone records; a record that does not parse is logged and skipped."""
    out: list[ZoneRecord] = []
    for name, rtype, value in _iter_generated(recordset):
        try:
            if rtype in ("A", "AAAA"):
                kind, rdata = address_rdata(value)
                if QTYPE[kind] != rtype:
                    raise ValueError(f"{rtype} record with address {value!r}")
                out.append((name, kind, rdata))
            elif rtype == "SRV":
                target, _, port = value.rpartition(":")
                if not target or not port.isdigit() or not 0 <= int(port) < 65536:
                    raise ValueError(f"SRV value {value!r} is not target:port")
                out.append((name, T_SRV, SRV(0, 0, int(port), target if target.endswith(".") else target + ".")))
            else:
                raise ValueError(f"unsupported record type {rtype!r}")
        except ValueError as exc:
            log.warning("skipping generated record %s %s %s: %s", name, rtype, value, exc)
    return out


def rebase(records: Iterable[ZoneRecord], old: str, new: str) -> list[ZoneRecord]:
    """The same records under another origin (``mesos`` → ``mesos.thisdcos.directory``); SRV targets too."""
    def move(name: str) -> str:
        bare = name.rstrip(".").lower()
        if bare == old:
            return new
        if bare.endswith("." + old):
            return bare[: -len(old)] + new
        return bare

    out: list[ZoneRecord] = []
    for name, rtype, rdata in records:
        if rtype == T_SRV:
            rdata = SRV(rdata.priority, rdata.weight, rdata.port, move(str(rdata.target)) + ".")
        out.append((move(name), rtype, rdata))
    return out


def dcos_records(records: Iterable[ZoneRecord], mesos_domain: str, leader_ip: str | None,
                 master_ips: Iterable[str]) -> list[ZoneRecord]:
    """``dcos.thisdcos.directory`` from the Mesos records, as dcos-net named tasks.

    ``<task>.<framework>.agentip`` → the agent's address (Mesos-DNS ``T.F.slave.D``),
    ``autoip`` → the task's own address, falling back to the agent's (Mesos-DNS ``T.F.D``),
    ``containerip`` → the task's addresses that are not the agent's (none for host networking).
    """
    domain = mesos_domain.rstrip(".").lower()
    slave_suffix = ".slave." + domain
    by_name: dict[str, list[tuple[int, object]]] = {}
    for name, rtype, rdata in records:
        if rtype in (T_A, T_AAAA):
            by_name.setdefault(name.rstrip(".").lower(), []).append((rtype, rdata))
    out: list[ZoneRecord] = []
    for name, agent_addresses in by_name.items():
        if not name.endswith(slave_suffix):
            continue
        task = name[: -len(slave_suffix)]
        if "." not in task:             # "<framework>.slave" is not a task name
            continue
        task_addresses = by_name.get(f"{task}.{domain}", [])
        agent_set = {str(rdata) for _, rdata in agent_addresses}
        out += [(f"{task}.agentip.{DCOS}", t, r) for t, r in agent_addresses]
        out += [(f"{task}.autoip.{DCOS}", t, r) for t, r in (task_addresses or agent_addresses)]
        out += [(f"{task}.containerip.{DCOS}", t, r) for t, r in task_addresses if str(r) not in agent_set]
    for ip in master_ips:
        out.append((f"master.{DCOS}", *address_rdata(ip)))
    if leader_ip:
        out.append((f"leader.{DCOS}", *address_rdata(leader_ip)))
    return out


def vip_records(names: dict[str, str]) -> list[ZoneRecord]:
    """VIP names → address records. Raises ValueError naming the first bad entry (nothing applied)."""
    out: list[ZoneRecord] = []
    for name, address in names.items():
        bare = str(name).rstrip(".").lower()
        if not bare.endswith("." + L4LB):
            raise ValueError(f"VIP name {name!r} is not under {L4LB}")
        try:
            out.append((bare, *address_rdata(str(address))))
        except ValueError:
            raise ValueError(f"VIP {name!r}: {address!r} is not an IP address") from None
    return out
