"""The node's own zones, answered authoritatively from memory.

Each :class:`Zone` is an immutable index built once per change of its inputs (records from the
Mesos-DNS generator, the programmed VIP names, the masters); lookups never build anything but the
reply's RRs. A name that exists with other types (or only has names below it) is NODATA, a name
that does not exist is NXDOMAIN; both carry the zone's SOA in the authority section (RFC 2308).
Mesos-DNS answers an absent name asked for SRV, SOA or NS with NOERROR (and the SOA), not
NXDOMAIN; its zone is built with ``MESOS_DNS_NOERROR_TYPES`` to do the same.

Records are kept as plain values (an address string, an :class:`Srv` tuple): a view of 10,000
tasks gives 80,000 records three zones over, and dnslib objects compare and build slowly (their
``__eq__`` walks every field). A value becomes a dnslib rdata the first time an answer needs it.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

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



class Srv(NamedTuple):
    """An SRV record's data; ``target`` ends with a dot."""
    priority: int
    weight: int
    port: int
    target: str


RData = str | Srv           # A/AAAA: the address in canonical text; SRV: Srv
ZoneRecord = tuple[str, int, RData]     # (name without trailing dot, QTYPE, value)


def to_dnslib(rtype: int, value: RData) -> object:
    """The dnslib rdata an answer carries for a zone value."""
    if rtype == T_A:
        return A(value)
    if rtype == T_AAAA:
        return AAAA(value)
    if rtype == T_SRV and isinstance(value, Srv):
        return SRV(value.priority, value.weight, value.port, value.target)
    raise ValueError(f"no rdata for type {QTYPE.get(rtype, rtype)} value {value!r}")


_UNSEEN: dict = {}       # a marker: not the None that means "outside the zone"


def _mover(old: str, new: str) -> Callable[[str], str]:
    """A function moving a name (no trailing dot needed) from under ``old`` to under ``new``."""
    cut = len(old)

    def move(name: str) -> str:
        bare = name.rstrip(".").lower()
        if bare == old:
            return new
        if bare.endswith("." + old):
            return bare[:-cut] + new
        return bare
    return move


def _moved_srv(value: RData, move: Callable[[str], str]) -> RData:
    return Srv(value.priority, value.weight, value.port, move(value.target) + ".") if isinstance(value, Srv) else value


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
        origin = origin.rstrip(".").lower()
        # name → type → values, in the order first seen (a dict de-duplicates them by hash).
        values: dict[str, dict[int, dict[RData, None]]] = {}
        exists: set[str] = {origin}
        suffix = "." + origin
        by_raw_name: dict[str, dict[int, dict[RData, None]] | None] = {}    # names repeat: normalise each once
        for raw, rtype, value in records:
            types = by_raw_name.get(raw, _UNSEEN)
            if types is _UNSEEN:
                name = raw.rstrip(".").lower()
                if name != origin and not name.endswith(suffix):
                    log.warning("record %s outside zone %s dropped", name, origin)
                    types = None
                else:
                    types = values.get(name)
                    if types is None:
                        types = values[name] = {}
                        while name != origin and name not in exists:
                            exists.add(name)
                            name = name.partition(".")[2]
                by_raw_name[raw] = types
            if types is None:
                continue
            rrset = types.get(rtype)
            if rrset is None:
                rrset = types[rtype] = {}
            rrset[value] = None
        self._setup(origin, values, exists, ttl=ttl, soa=soa, serial=serial, ns_in_authority=ns_in_authority,
                    noerror_types=noerror_types)

    @classmethod
    def mirror(cls, zone: Zone, origin: str, *, soa: SoaNames, serial: int, ns_in_authority: bool = False,
               noerror_types: frozenset[int] = frozenset()) -> Zone:
        """``zone``'s records under another origin (``mesos`` → ``mesos.thisdcos.directory``),
        SRV targets inside it moved too; cheaper than building the records again."""
        origin = origin.rstrip(".").lower()
        old, cut = zone.origin, len(zone.origin)
        move = _mover(old, origin)      # SRV targets may point anywhere

        def inside(name: str) -> str:   # a normalised name of the zone: the origin or below it
            return origin if name == old else name[:-cut] + origin
        values = {inside(name): {rtype: ({_moved_srv(v, move): None for v in rrset} if rtype == T_SRV else rrset)
                                 for rtype, rrset in types.items()}
                  for name, types in zone._values.items()}
        exists = {inside(name) for name in zone._exists}
        mirrored = cls.__new__(cls)
        mirrored._setup(origin, values, exists, ttl=zone.ttl, soa=soa, serial=serial,
                        ns_in_authority=ns_in_authority, noerror_types=noerror_types)
        return mirrored

    def _setup(self, origin: str, values: dict[str, dict[int, dict[RData, None]]], exists: set[str], *,
               ttl: int, soa: SoaNames, serial: int, ns_in_authority: bool, noerror_types: frozenset[int]) -> None:
        self.origin = origin
        self.noerror_types = noerror_types
        self.ttl = ttl
        self.ns_in_authority = ns_in_authority
        self._values = values
        self._exists = exists
        self.record_count = sum(len(rrset) for types in values.values() for rrset in types.values())
        self._soa_rdata = SOA(soa.mname, soa.rname, (serial, SOA_REFRESH, SOA_RETRY, SOA_EXPIRE, ttl))
        self._ns_rdata = NS(soa.mname)
        # An answer's dnslib rdata by (name, type), built when first asked for.
        self._rdatas: dict[tuple[str, int], list] = {(origin, T_SOA): [self._soa_rdata],
                                                     (origin, T_NS): [self._ns_rdata]}
        values.setdefault(origin, {})
        self._soa_rr = RR(origin + ".", T_SOA, ttl=ttl, rdata=self._soa_rdata)
        self._ns_rr = RR(origin + ".", T_NS, ttl=ttl, rdata=self._ns_rdata)

    def names(self) -> Iterator[tuple[str, int, RData]]:
        """Every record (name, QTYPE, value), apex SOA/NS excluded."""
        for name, types in self._values.items():
            for rtype, values in types.items():
                for value in values:
                    yield name, rtype, value

    def rdatas(self, name: str, rtype: int) -> list:
        """The dnslib rdatas of one RRset (the apex's SOA and NS included)."""
        key = (name, rtype)
        found = self._rdatas.get(key)
        if found is None:
            values = self._values.get(name, {}).get(rtype)
            if not values:
                return []       # not remembered: asking every type of every name must not grow memory
            found = self._rdatas[key] = [to_dnslib(rtype, value) for value in values]
        return found

    def _types(self, name: str) -> list[int] | None:
        types = self._values.get(name)
        if types is None:
            return None
        if name == self.origin:
            return [*types, T_SOA, T_NS]
        return list(types)

    def lookup(self, qname: DNSLabel, name: str, qtype: int) -> Reply:
        """Answers ``qtype`` for ``name`` (lowercase); owner names keep the case the client asked in."""
        types = self._types(name)
        if types is None:
            return self._negative(NOERROR if name in self._exists or qtype in self.noerror_types else NXDOMAIN)
        if qtype == T_ANY:
            found = [(rtype, rdata) for rtype in types for rdata in self.rdatas(name, rtype)]
        else:
            found = [(qtype, rdata) for rdata in self.rdatas(name, qtype)]
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
def address_rdata(value: str) -> tuple[int, str]:
    """``"10.0.0.1"`` → (A, "10.0.0.1"); ``"fd01::1"`` → (AAAA, "fd01::1"), canonical text.
    Raises ValueError otherwise."""
    address = ipaddress.ip_address(value.strip())
    return (T_A if address.version == 4 else T_AAAA), str(address)


def _iter_generated(recordset) -> Iterator[tuple[str, str, str]]:
    """(name, rtype, value) from a ``spartan_dns.records.RecordSet`` (or any iterable of records)."""
    records = getattr(recordset, "records", recordset)
    if callable(records):
        records = records()
    for record in records:
        yield record.name, record.rtype, record.value


_ADDRESS_TYPES = {"A": T_A, "AAAA": T_AAAA}


def mesos_records(recordset) -> list[ZoneRecord]:
    """The generator's records as zone records; a record that does not parse is logged and skipped."""
    out: list[ZoneRecord] = []
    append = out.append
    addresses: dict[str, tuple[int, str]] = {}     # agents' addresses repeat across their tasks
    for name, rtype, value in _iter_generated(recordset):
        try:
            wanted = _ADDRESS_TYPES.get(rtype)
            if wanted is not None:
                parsed = addresses.get(value)
                if parsed is None:
                    parsed = addresses[value] = address_rdata(value)
                if parsed[0] != wanted:
                    raise ValueError(f"{rtype} record with address {value!r}")
                append((name, wanted, parsed[1]))
            elif rtype == "SRV":
                target, _, port = value.rpartition(":")
                if not target or not port.isdigit() or not 0 <= int(port) < 65536:
                    raise ValueError(f"SRV value {value!r} is not target:port")
                append((name, T_SRV, Srv(0, 0, int(port), target if target.endswith(".") else target + ".")))
            else:
                raise ValueError(f"unsupported record type {rtype!r}")
        except ValueError as exc:
            log.warning("skipping generated record %s %s %s: %s", name, rtype, value, exc)
    return out


def rebase(records: Iterable[ZoneRecord], old: str, new: str) -> list[ZoneRecord]:
    """The same records under another origin (``mesos`` → ``mesos.thisdcos.directory``); SRV targets too."""
    move = _mover(old.rstrip(".").lower(), new.rstrip(".").lower())
    return [(move(name), rtype, _moved_srv(value, move)) for name, rtype, value in records]


def dcos_records(records: Iterable[ZoneRecord], mesos_domain: str, leader_ip: str | None,
                 master_ips: Iterable[str]) -> list[ZoneRecord]:
    """``dcos.thisdcos.directory`` from the Mesos records, as dcos-net named tasks.

    ``<task>.<framework>.agentip`` → the agent's address (Mesos-DNS ``T.F.slave.D``),
    ``autoip`` → the task's own address, falling back to the agent's (Mesos-DNS ``T.F.D``),
    ``containerip`` → the task's addresses that are not the agent's (none for host networking).
    """
    domain = mesos_domain.rstrip(".").lower()
    slave_suffix = ".slave." + domain
    by_name: dict[str, list[tuple[int, RData]]] = {}
    for name, rtype, value in records:
        if rtype in (T_A, T_AAAA):
            by_name.setdefault(name.rstrip(".").lower(), []).append((rtype, value))
    out: list[ZoneRecord] = []
    for name, agent_addresses in by_name.items():
        if not name.endswith(slave_suffix):
            continue
        task = name[: -len(slave_suffix)]
        if "." not in task:             # "<framework>.slave" is not a task name
            continue
        task_addresses = by_name.get(f"{task}.{domain}", [])
        agent_set = {value for _, value in agent_addresses}
        out += [(f"{task}.agentip.{DCOS}", t, r) for t, r in agent_addresses]
        out += [(f"{task}.autoip.{DCOS}", t, r) for t, r in (task_addresses or agent_addresses)]
        out += [(f"{task}.containerip.{DCOS}", t, r) for t, r in task_addresses if r not in agent_set]
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
