"""Mesos-DNS's record generator: a Mesos master state document → A, AAAA and SRV records.

Reproduces mesosphere/mesos-dns ``records/generator.go`` (the version the conformance vectors were
taken from) name for name. With ``D`` the domain (``mesos``), ``F`` the framework name as a
domain fragment (each dot-separated part made a label, see ``spartan_dns.labels``), ``T`` the task
name as one label (dots become ``-``), ``H`` the first 5 characters of z-base-32(SHA-1(task id))
and ``S`` the last ``-``-separated field of the agent id, lower-cased:

=============================================  ==========  ===========================================
name                                           type        value
=============================================  ==========  ===========================================
``F.D.``                                       A/AAAA      framework scheduler IP (from its ``pid``)
``_framework._tcp.F.D.``                       SRV         ``F.D.:<scheduler port>``
``slave.D.``                                   A/AAAA      every agent's IP (from its ``pid``)
``_slave._tcp.D.``                             SRV         ``slave.D.:<agent port>``
``<ns>``  (SOA mname, ``ns1.D.``)              A/AAAA      the listener address, if one is given
``leader.D.``                                  A/AAAA      the leading master (state ``leader``)
``_leader._tcp.D.``, ``_leader._udp.D.``       SRV         ``leader.D.:<leader port>``
``master.D.``                                  A/AAAA      the leader and every configured master
``masterN.D.``                                 A/AAAA      the N-th configured master; the leader
                                                           gets the next index if it is not listed
``T.F.D.``, ``T-H-S.F.D.``                     A/AAAA      task IPs (see *IP sources*)
``T.F.slave.D.``, ``T-H-S.F.slave.D.``         A/AAAA      the IPs of the agent running the task
``_T._tcp|_udp.F.slave.D.``                    SRV         ``T-H-S.F.slave.D.:<port>`` for each port
                                                           in the task's ``resources.ports``
``_T._tcp|_udp.F.D.``                          SRV         the same, for tasks without DiscoveryInfo
``_T._<proto>.F.D.``                           SRV         ``T-H-S.F.D.:<number>`` for each
                                                           DiscoveryInfo port (no protocol: tcp+udp)
``_<portname>._T._<proto>.F.D.``               SRV         the same, for each *named* discovery port
=============================================  ==========  ===========================================

Tasks with DiscoveryInfo (a non-empty ``discovery.name``) are named after it instead of the task
name, and — a legacy Mesos-DNS kept for compatibility, reproduced here — get every task record a
second time under the *raw* discovery name (``liquor.store.marathon.mesos.``).

Filtering: only tasks in state ``TASK_RUNNING`` whose agent is listed in ``slaves`` get records
(Mesos-DNS does not look at health checks). IP sources are tried in the order given and the first
that yields any valid IP wins: ``netinfo`` (container NetworkInfo addresses), ``mesos`` / ``docker``
(the ``MesosContainerizer`` / ``Docker.NetworkSettings.IPAddress`` status labels), ``host`` (the
agent's IPs). Container sources read only the newest ``TASK_RUNNING`` status (by timestamp).

Where Mesos-DNS would crash or publish something no DNS server can serve, this module skips the
record and says so in ``RecordSet.warnings``: a leader or master address that is not an IP, a host
name with no resolver given (Mesos-DNS resolves it with the system resolver — pass
``resolve_hostname`` for that), a discovery port outside 0-65535 (resource port ranges are clamped
to it), names that cannot be encoded in DNS wire format (an empty label, a label over 63 octets,
over 255 octets in all).
"""

from __future__ import annotations

import hashlib
import ipaddress
import socket
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError, model_validator

from spartan_dns.labels import LabelFunc, domain_fragment, label_function

RecordType = Literal["A", "AAAA", "SRV"]
IP_SOURCES = ("netinfo", "mesos", "host", "docker")
DEFAULT_IP_SOURCES = ("netinfo", "mesos", "host")
MESOS_IP_LABEL = "MesosContainerizer.NetworkSettings.IPAddress"
DOCKER_IP_LABEL = "Docker.NetworkSettings.IPAddress"
_ZBASE32 = "ybndrfg8ejkmcpqxot1uwisza345h769"

HostnameResolver = Callable[[str], Sequence[str]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class MesosStateError(ValueError):
    """The state document does not have the shape of a Mesos ``/master/state``; names the field."""


# -- the part of /master/state the generator reads ----------------------------------------------
def _split_host_port(address: str) -> tuple[str, str]:
    """``host:port`` or ``[v6]:port`` → (host, port); ValueError if there is no single port."""
    if address.startswith("["):
        host, bracket, rest = address[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise ValueError(f"expected '[ipv6]:port', got {address!r}")
        return host, rest[1:]
    host, colon, port = address.rpartition(":")
    if not colon or ":" in host:
        raise ValueError(f"expected 'host:port', got {address!r}")
    return host, port


def _valid_port(port: str) -> bool:
    return port.isascii() and port.isdigit() and int(port) <= 65535


def _parse_pid(value: Any) -> tuple[str, str] | None:
    """A libprocess PID ``id@host:port`` → (host, port), as Mesos-DNS's upid.Parse accepts it."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"expected a PID string 'id@host:port', got {type(value).__name__}")
    parts = value.strip('" ').split("@")
    if len(parts) != 2:
        raise ValueError(f"expected one '@' in PID 'id@host:port', got {value!r}")
    host, port = _split_host_port(parts[1])
    if not host or not _valid_port(port):
        raise ValueError(f"expected PID 'id@host:port' with a port 0-65535, got {value!r}")
    return host, port


def _parse_port_ranges(value: Any) -> tuple[int, ...]:
    """Mesos's ``"[31000-31001, 31005-31005]"`` → (31000, 31001, 31005).

    Malformed numbers are skipped as Mesos-DNS skips them; a string Mesos-DNS would crash on
    (no ``[``, a range without ``-``) is an error naming the problem.
    """
    if value is None or value == "" or value == "[]":
        return ()
    if not isinstance(value, str):
        raise ValueError(f"expected a port-range string like '[31000-31005]', got {type(value).__name__}")
    if "[" not in value:
        raise ValueError(f"expected a port-range string like '[31000-31005]', got {value!r}")
    inside = value.split("[")[1].split("]")[0]
    ports: list[int] = []
    for item in inside.split(","):
        bounds = item.strip().split("-")
        if len(bounds) < 2:
            raise ValueError(f"expected ranges 'low-high' in {value!r}, got {item.strip()!r}")
        if not all(_is_go_int(bound) for bound in bounds[:2]):
            continue
        low, high = max(int(bounds[0]), 0), min(int(bounds[1]), 65535)
        ports.extend(range(low, high + 1))
    return tuple(ports)


def _is_go_int(text: str) -> bool:
    digits = text[1:] if text[:1] in "+-" else text
    return digits.isascii() and digits.isdigit()


PID = Annotated[tuple[str, str] | None, BeforeValidator(_parse_pid)]
PortRanges = Annotated[tuple[int, ...], BeforeValidator(_parse_port_ranges)]


class _StateModel(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _null_means_absent(cls, data: Any) -> Any:
        # Go's decoder leaves a field at its zero value for JSON null; so do we.
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if value is not None}
        return data


class Label(_StateModel):
    key: str = ""
    value: str = ""


class IPAddressEntry(_StateModel):
    ip_address: str = ""


class NetworkInfo(_StateModel):
    ip_addresses: tuple[IPAddressEntry, ...] = ()
    ip_address: str = ""  # Mesos 0.25 had a single address here


class ContainerStatus(_StateModel):
    network_infos: tuple[NetworkInfo, ...] = ()


class Status(_StateModel):
    state: str = ""
    timestamp: float = 0.0
    labels: tuple[Label, ...] = ()
    container_status: ContainerStatus = ContainerStatus()


class Resources(_StateModel):
    ports: PortRanges = ()


class DiscoveryPort(_StateModel):
    number: int = 0
    protocol: str = ""
    name: str = ""


class DiscoveryPorts(_StateModel):
    ports: tuple[DiscoveryPort, ...] = ()


class DiscoveryInfo(_StateModel):
    name: str = ""
    ports: DiscoveryPorts = DiscoveryPorts()


class Task(_StateModel):
    id: str = ""
    name: str = ""
    slave_id: str = ""
    state: str = ""
    statuses: tuple[Status, ...] = ()
    resources: Resources = Resources()
    discovery: DiscoveryInfo = DiscoveryInfo()


class Framework(_StateModel):
    name: str = ""
    hostname: str = ""
    pid: PID = None
    tasks: tuple[Task, ...] = ()


class Slave(_StateModel):
    id: str = ""
    hostname: str = ""
    pid: PID = None


class MesosState(_StateModel):
    """The fields of a Mesos ``/master/state`` document that DNS records come from."""

    leader: str = ""
    frameworks: tuple[Framework, ...] = ()
    slaves: tuple[Slave, ...] = ()


def parse_state(state: Mapping[str, Any] | MesosState) -> MesosState:
    """Validate a decoded ``/master/state`` document.

    Raises MesosStateError naming the first bad field (``frameworks[3].tasks[0].resources.ports``).
    """
    if isinstance(state, MesosState):
        return state
    if not isinstance(state, Mapping):
        raise MesosStateError(f"state: expected a JSON object (a Mesos /master/state), got {type(state).__name__}")
    try:
        return MesosState.model_validate(state)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        more = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
        raise MesosStateError(f"state{where}: {message}{more}") from None


# -- records ------------------------------------------------------------------------------------
def normalise_name(name: str) -> str:
    """Lower-case with exactly one trailing dot: the key every lookup uses."""
    return name.lower().rstrip(".") + "."


@dataclass(frozen=True, slots=True)
class Record:
    """One resource record: A/AAAA ``value`` is an IP, SRV ``value`` is ``target:port``."""

    name: str
    rtype: RecordType
    value: str

    def srv(self) -> tuple[str, int]:
        """(target, port) of an SRV record; ValueError for other types."""
        if self.rtype != "SRV":
            raise ValueError(f"{self.name} is an {self.rtype} record, not SRV")
        target, _, port = self.value.rpartition(":")
        return target, int(port)

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "rtype": self.rtype, "value": self.value}


@dataclass(frozen=True)
class RecordSet:
    """An immutable set of records with a case-insensitive index by name and type."""

    records: tuple[Record, ...]
    domain: str = "mesos"
    warnings: tuple[str, ...] = ()

    @cached_property
    def _index(self) -> dict[str, dict[str, tuple[Record, ...]]]:
        # Built on the first lookup: the agent only iterates the records into its zones.
        grouped: dict[str, dict[str, list[Record]]] = {}
        for record in self.records:
            grouped.setdefault(normalise_name(record.name), {}).setdefault(record.rtype, []).append(record)
        return {name: {rtype: tuple(rs) for rtype, rs in by_type.items()} for name, by_type in grouped.items()}

    def by_name(self, name: str, rtype: str) -> list[Record]:
        """Records of ``rtype`` at ``name`` (any case, trailing dot optional); [] if none."""
        return list(self._index.get(normalise_name(name), {}).get(rtype.upper(), ()))

    def rtypes(self, name: str) -> frozenset[str]:
        """The record types present at ``name``: empty means the name does not exist (NXDOMAIN)."""
        return frozenset(self._index.get(normalise_name(name), ()))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and normalise_name(name) in self._index

    def names(self) -> list[str]:
        """Every owner name, normalised, in generation order."""
        return list(self._index)

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def to_json(self) -> list[dict[str, str]]:
        """``[{"name", "rtype", "value"}]`` in generation order (``navstar dns records --json``)."""
        return [record.to_json() for record in self.records]


# -- helpers ------------------------------------------------------------------------------------
def task_hash(task_id: str) -> str:
    """First 5 characters of z-base-32(SHA-1(task_id)): the ``H`` in ``T-H-S.F.D.``."""
    digest = int.from_bytes(hashlib.sha1(task_id.encode(), usedforsecurity=False).digest(), "big")
    # 5 z-base-32 characters are the top 25 of the 160 bits.
    top = digest >> (160 - 25)
    return "".join(_ZBASE32[(top >> shift) & 0x1F] for shift in (20, 15, 10, 5, 0))


def slave_id_tail(slave_id: str) -> str:
    """The ``S`` in ``T-H-S.F.D.``: the last ``-`` field of the agent id, lower-cased."""
    return slave_id.split("-")[-1].lower()


@lru_cache(maxsize=65536)
def parse_ip(text: str) -> IPAddress | None:
    """An IP as Go's net.ParseIP reads it (IPv4-mapped IPv6 counts as IPv4), else None.
    Remembered: an agent's address is parsed again for each of its tasks on every view."""
    if not text or "%" in text:
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _address_type(address: IPAddress) -> RecordType:
    return "A" if address.version == 4 else "AAAA"


@lru_cache(maxsize=65536)
def _typed_text(address: IPAddress) -> tuple[RecordType, str]:
    return _address_type(address), str(address)


def _typed_texts(addresses: Iterable[IPAddress]) -> list[tuple[RecordType, str]]:
    """(record type, text) per address; remembered, as agents' addresses repeat for each task."""
    return [_typed_text(address) for address in addresses]


def _wire_encodable(name: str) -> bool:
    """Fits DNS wire format: labels of 1-63 octets, at most 255 octets with the length bytes."""
    body = name[:-1] if name.endswith(".") else name
    encoded = body.encode("utf-8", "surrogatepass")
    # each label costs its length + 1, the root 1 more: len(body) + 2 in all
    return len(encoded) <= 253 and all(0 < len(label) <= 63 for label in encoded.split(b"."))


def resolve_with_system(host: str) -> list[str]:
    """The host's addresses from the system resolver (what Mesos-DNS does); [] if it fails."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return []
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _newest_running_status(task: Task) -> Status | None:
    newest: Status | None = None
    newest_time = -1.0
    for status in task.statuses:
        if status.state == "TASK_RUNNING" and status.timestamp > newest_time:
            newest, newest_time = status, status.timestamp
    return newest


def _netinfo_ips(task: Task, _agent_ips: Sequence[str]) -> list[str]:
    status = _newest_running_status(task)
    if status is None:
        return []
    ips: list[str] = []
    for info in status.container_status.network_infos:
        if info.ip_addresses:
            ips.extend(entry.ip_address for entry in info.ip_addresses)
        elif info.ip_address:
            ips.append(info.ip_address)
    return ips


def _label_ips(key: str) -> Callable[[Task, Sequence[str]], list[str]]:
    def ips(task: Task, _agent_ips: Sequence[str]) -> list[str]:
        status = _newest_running_status(task)
        return [label.value for label in status.labels if label.key == key] if status else []

    return ips


def _host_ips(_task: Task, agent_ips: Sequence[str]) -> list[str]:
    return list(agent_ips)


_SOURCES: dict[str, Callable[[Task, Sequence[str]], list[str]]] = {
    "netinfo": _netinfo_ips,
    "mesos": _label_ips(MESOS_IP_LABEL),
    "docker": _label_ips(DOCKER_IP_LABEL),
    "host": _host_ips,
}


def task_ips(task: Task, ip_sources: Sequence[str], agent_ips: Sequence[str]) -> list[IPAddress]:
    """The valid IPs of the first source in ``ip_sources`` that yields any."""
    for source in ip_sources:
        ips = [ip for ip in map(parse_ip, _SOURCES[source](task, agent_ips)) if ip is not None]
        if ips:
            return ips
    return []


# -- the generator ------------------------------------------------------------------------------
class _Generator:
    def __init__(self, domain: str, label: LabelFunc, ip_sources: Sequence[str],
                 resolve_hostname: HostnameResolver | None) -> None:
        self.domain = domain
        labels: dict[str, str] = {}     # task, port and protocol names repeat across tasks

        def cached_label(text: str) -> str:
            found = labels.get(text)
            if found is None:
                found = labels[text] = label(text)
            return found
        self.label = cached_label
        self.ip_sources = ip_sources
        self.resolve_hostname = resolve_hostname
        self.records: list[Record] = []
        self.warnings: list[str] = []
        self._seen: set[tuple[str, str, str]] = set()
        self._servable_names: dict[str, bool] = {}  # names repeat a lot: check each once
        # agent id → its IPs; an agent with no usable IP is still known (its tasks keep records)
        self.agent_ips: dict[str, list[str]] = {}

    def add(self, name: str, rtype: RecordType, value: str) -> bool:
        """Add a record unless it is already there or cannot be served; True if added."""
        key = (name, rtype, value)
        if not value or key in self._seen:
            return False
        if not self._servable(name) or (rtype == "SRV" and not self._servable(value.rpartition(":")[0])):
            return False
        self._seen.add(key)
        self.records.append(Record(name, rtype, value))
        return True

    def _servable(self, name: str) -> bool:
        servable = self._servable_names.get(name)
        if servable is None:
            servable = self._servable_names[name] = _wire_encodable(name)
            if not servable:
                self.warnings.append(f"skipped records for {name!r}: not encodable as a DNS name")
        return servable

    def host_ips(self, host: str, what: str) -> list[IPAddress]:
        """Mesos-DNS's hostToIPs: a literal IP, else whatever the resolver says."""
        literal = parse_ip(host)
        if literal is not None:
            return [literal]
        if self.resolve_hostname is not None:
            resolved = [ip for ip in map(parse_ip, self.resolve_hostname(host)) if ip is not None]
            if resolved:
                return resolved
            self.warnings.append(f"{what}: host {host!r} did not resolve to any IP")
        else:
            self.warnings.append(f"{what}: host {host!r} is not an IP (no hostname resolver given)")
        return []

    # frameworkname.D. and _framework._tcp.frameworkname.D.
    def frameworks(self, state: MesosState) -> None:
        for framework in state.frameworks:
            host, port = framework.pid if framework.pid else (framework.hostname, "")
            ips = self.host_ips(host, f"framework {framework.name!r}")
            if not ips:
                continue
            name = f"{domain_fragment(framework.name, self.label)}.{self.domain}."
            for ip in ips:
                self.add(name, _address_type(ip), str(ip))
            if port:
                self.add(f"_framework._tcp.{name}", "SRV", f"{name}:{port}")

    # slave.D. and _slave._tcp.D.
    def slaves(self, state: MesosState) -> None:
        name = f"slave.{self.domain}."
        for slave in state.slaves:
            ips: list[IPAddress] = []
            if slave.pid is None:
                self.warnings.append(f"agent {slave.id!r} has no pid: no agent records")
            else:
                ips = self.host_ips(slave.pid[0], f"agent {slave.id!r}")
            for ip in ips:
                self.add(name, _address_type(ip), str(ip))
            if ips and slave.pid is not None:
                self.add(f"_slave._tcp.{self.domain}.", "SRV", f"{name}:{slave.pid[1]}")
            self.agent_ips[slave.id] = [str(ip) for ip in ips]

    def listener(self, ns: str, listeners: Sequence[str]) -> None:
        for listener in listeners:
            address = parse_ip(listener)
            if address is not None:
                self.add(ns, _address_type(address), str(address))

    # leader.D., master.D., masterN.D., _leader._tcp/_udp.D.
    def masters(self, masters: Sequence[str], leader: str) -> None:
        parts = leader.split("@")
        if len(parts) < 2:
            self.warnings.append(f"leader {leader!r} is not a PID 'id@host:port': no master records")
            return
        leader_address = parts[1]
        try:
            host, port = _split_host_port(leader_address)
        except ValueError as exc:
            self.warnings.append(f"leader {leader!r}: {exc}: no master records")
            return
        leader_ip = parse_ip(host)
        if leader_ip is None:
            self.warnings.append(f"leader {leader!r}: {host!r} is not an IP: no master records")
            return
        leader_type = _address_type(leader_ip)
        all_masters = f"master.{self.domain}."
        self.add(f"leader.{self.domain}.", leader_type, str(leader_ip))
        self.add(all_masters, leader_type, str(leader_ip))
        if _valid_port(port):
            for proto in ("tcp", "udp"):
                self.add(f"_leader._{proto}.{self.domain}.", "SRV", f"leader.{self.domain}.:{port}")
        else:
            self.warnings.append(f"leader {leader!r}: port {port!r} is not 0-65535: no _leader SRV")

        leader_numbered = False
        index = 0
        for master in masters:
            try:
                master_ip = parse_ip(_split_host_port(master)[0])
            except ValueError as exc:
                self.warnings.append(f"master {master!r}: {exc}")
                continue
            if master_ip is None:
                self.warnings.append(f"master {master!r}: host is not an IP")
                continue
            master_type = _address_type(master_ip)
            is_leader = master == leader_address
            if not is_leader and not self.add(all_masters, master_type, str(master_ip)):
                continue  # the same master listed twice
            if is_leader and leader_numbered:
                continue  # the leader listed twice
            self.add(f"master{index}.{self.domain}.", master_type, str(master_ip))
            index += 1
            leader_numbered = leader_numbered or is_leader
        if not leader_numbered:
            # the leader is not among the configured masters: it takes the next index
            self.add(f"master{index}.{self.domain}.", leader_type, str(leader_ip))

    def tasks(self, state: MesosState) -> None:
        for framework in state.frameworks:
            framework_fragment = domain_fragment(framework.name, self.label)
            for task in framework.tasks:
                if task.state != "TASK_RUNNING" or task.slave_id not in self.agent_ips:
                    continue
                agent_ips = self.agent_ips[task.slave_id]
                ips = task_ips(task, self.ip_sources, agent_ips)
                if task.discovery.name:
                    # Mesos-DNS's legacy: once under the raw discovery name, then the cleaned one.
                    for name in (task.discovery.name, self.label(task.discovery.name)):
                        self.task(task, name, framework_fragment, ips, agent_ips)
                else:
                    self.task(task, self.label(task.name), framework_fragment, ips, agent_ips)

    def task(self, task: Task, name: str, framework: str, ips: Sequence[IPAddress],
             agent_ips: Sequence[str]) -> None:
        tail = f".{self.domain}."
        canonical = f"{name}-{task_hash(task.id)}-{slave_id_tail(task.slave_id)}.{framework}"
        short = f"{name}.{framework}"
        for rtype, text in _typed_texts(ips):
            self.add(short + tail, rtype, text)
            self.add(canonical + tail, rtype, text)
        for rtype, text in _typed_texts(ip for ip in map(parse_ip, agent_ips) if ip is not None):
            self.add(f"{short}.slave{tail}", rtype, text)
            self.add(f"{canonical}.slave{tail}", rtype, text)

        has_discovery = bool(task.discovery.name)
        # Resource ports: always under .slave; also without it when there is no DiscoveryInfo.
        subdomains = (".slave",) if has_discovery else (".slave", "")
        for port in task.resources.ports:
            target = f"{canonical}.slave{tail}:{port}"
            for subdomain in subdomains:
                for proto in ("tcp", "udp"):
                    self.add(f"_{name}._{proto}.{framework}{subdomain}{tail}", "SRV", target)
        if not has_discovery:
            return
        for port in task.discovery.ports.ports:
            if not 0 <= port.number <= 65535:
                self.warnings.append(f"task {task.id!r}: discovery port {port.number} is not 0-65535")
                continue
            target = f"{canonical}{tail}:{port.number}"
            protocol = self.label(port.protocol)
            services = [f"_{name}._{proto}.{framework}" for proto in ((protocol,) if protocol else ("tcp", "udp"))]
            port_name = self.label(port.name)
            if port_name:
                services += [f"_{port_name}.{service}" for service in services]
            for service in services:
                self.add(service + tail, "SRV", target)


def _normalise_domain(domain: str) -> str:
    cleaned = domain.strip().lower().rstrip(".")
    if not cleaned or not _wire_encodable(cleaned + ".") or any(c.isspace() for c in cleaned):
        raise ValueError(f"domain: expected a DNS name like 'mesos', got {domain!r}")
    return cleaned


def _normalise_ip_sources(ip_sources: Sequence[str] | str) -> tuple[str, ...]:
    sources = ip_sources.split(",") if isinstance(ip_sources, str) else list(ip_sources)
    cleaned = tuple(source.strip().lower() for source in sources if source.strip())
    unknown = [source for source in cleaned if source not in _SOURCES]
    if unknown or not cleaned:
        raise ValueError(f"ip_sources: expected some of {', '.join(IP_SOURCES)}, got {ip_sources!r}")
    return cleaned


def _normalise_listeners(listener: str | Sequence[str] | None) -> tuple[str, ...]:
    listeners = () if listener is None else (listener,) if isinstance(listener, str) else tuple(listener)
    for address in listeners:
        ip = parse_ip(address)
        if ip is None or ip.is_unspecified:
            raise ValueError(f"listener: expected this resolver's concrete IP address, got {address!r}")
    return listeners


def generate(
    state: Mapping[str, Any] | MesosState,
    domain: str = "mesos",
    ip_sources: Sequence[str] | str = DEFAULT_IP_SOURCES,
    label_spec: str = "rfc1123",
    *,
    masters: Sequence[str] = (),
    ns: str | None = None,
    listener: str | Sequence[str] | None = None,
    resolve_hostname: HostnameResolver | None = None,
) -> RecordSet:
    """The records Mesos-DNS would serve for ``state`` (a decoded ``/master/state``).

    ``masters`` are the configured ``ip:port`` of every master (for ``masterN``); ``ns`` is the SOA
    mname (default ``ns1.<domain>.``), given an A/AAAA record to ``listener`` when one is set;
    ``resolve_hostname`` turns non-IP framework/agent hosts into IPs (none: they get no records).

    Pure and deterministic for a given state (unless the resolver is not). Raises MesosStateError
    for a malformed state and ValueError naming the parameter for a bad setting.
    """
    domain = _normalise_domain(domain)
    sources = _normalise_ip_sources(ip_sources)
    label = label_function(label_spec)
    listeners = _normalise_listeners(listener)
    parsed = parse_state(state)

    generator = _Generator(domain, label, sources, resolve_hostname)
    generator.frameworks(parsed)
    generator.slaves(parsed)
    generator.listener(normalise_name(ns) if ns else f"ns1.{domain}.", listeners)
    generator.masters(masters, parsed.leader)
    generator.tasks(parsed)
    return RecordSet(tuple(generator.records), domain=domain, warnings=tuple(generator.warnings))
