"""The netfilter seam of the NFQUEUE dataplane: ipsets, rules, the NAT map, VIP routes, conntrack reads.

``Netfilter`` is the protocol; ``KernelNetfilter`` the real one (pyroute2's netlink message
classes for conntrack and ipset, pyroute2 IPRoute for routes, iptables-nft and ``nft`` for the
few rules); ``FakeNetfilter`` keeps it all in memory for tests.

Kernel state it owns, all in the node's network namespace:

* ipset ``navstar-mm-vips`` (``hash:ip,port``, members ``11.0.0.1,tcp:80``): the VIPs;
* mangle chain ``NAVSTAR-MM`` (from PREROUTING and OUTPUT, after conntrack): the first packet of
  a new flow (conntrack state NEW, TCP or UDP) to a VIP goes to the queue; the agent's verdict
  puts a mark on it naming the backend (``--queue-bypass``: with no agent the packet goes on
  unmarked …);
* nftables table ``ip navstar-minuteman``: map ``backends`` (backend id → address . port) and NAT
  chains at the NAT hooks: a marked first packet is DNATed to the backend its mark names (one map
  lookup, whatever the number of VIPs), and masqueraded when the mark asks for source NAT
  (hairpin); conntrack then applies that NAT to the rest of the flow;
* filter chain ``NAVSTAR-MM-REJECT`` (from INPUT, FORWARD, OUTPUT): … and a new VIP flow that was
  not DNATed is rejected at once (TCP reset / ICMP port unreachable) instead of hanging;
* ``local 11.0.0.0/8 dev lo`` (the named-VIP pool) and ``local <vip>/32`` for address VIPs
  outside it (protocol 211, preferred source the node's IP) so VIP packets reach the hooks.

The mark of a first packet: ``MARK_TAG`` in the top byte, ``MARK_SNAT`` for source NAT, the
backend id in the low 23 bits. It lives on that one packet between the mangle hook and the end
of POSTROUTING, where it is cleared.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import struct
import subprocess
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from errno import EEXIST, ENOENT
from typing import NamedTuple, Protocol, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink import NETLINK_NETFILTER, NLM_F_ACK, NLM_F_CREATE, NLM_F_REQUEST
from pyroute2.netlink.nfnetlink import NFNL_SUBSYS_CTNETLINK, NFNL_SUBSYS_IPSET
from pyroute2.netlink.nfnetlink.ipset import IPSET_CMD_ADD, IPSET_CMD_DEL, ipset_msg
from pyroute2.netlink.nfnetlink.nfctsocket import (
    IPCTNL_MSG_CT_GET,
    NFCTAttrTuple,
    nfct_msg,
)

from minuteman.dataplane import Backend, Protocol_, VipKey

VIP_SET = "navstar-mm-vips"
QUEUE_CHAIN = "NAVSTAR-MM"
REJECT_CHAIN = "NAVSTAR-MM-REJECT"
NAT_TABLE = "navstar-minuteman"
BACKEND_MAP = "backends"
# Left by earlier versions (raw-table queueing, conntrack entries made by the agent): removed on sight.
LEGACY_CHAINS = {"raw": ("NAVSTAR-MM", ("PREROUTING", "OUTPUT")),
                 "nat": ("NAVSTAR-MM-NAT", ("PREROUTING", "OUTPUT", "POSTROUTING"))}
LEGACY_SETS = ("navstar-mm-udp",)
ROUTE_PROTO = 211          # marks the VIP routes as ours (rtm_protocol)

MARK_TAG, MARK_TAG_MASK = 0x4E000000, 0xFF000000
MARK_SNAT = 0x00800000
MARK_ID_MASK = 0x007FFFFF   # backend ids 1 … MARK_ID_MASK

# As ``nft list`` prints them, so that an unchanged table is recognised and left alone.
_DNAT_RULE = (f"meta l4proto {{ tcp, udp }} meta mark 0x{MARK_TAG:08x}/8 "
              f"dnat ip to meta mark & 0x{MARK_ID_MASK:08x} map @{BACKEND_MAP}")
_NAT_CHAINS = {
    "dnat-prerouting": ("type nat hook prerouting priority dstnat; policy accept;", _DNAT_RULE),
    "dnat-output": ("type nat hook output priority -100; policy accept;", _DNAT_RULE),
    "snat-postrouting": ("type nat hook postrouting priority srcnat; policy accept;",
                         f"meta mark 0x{MARK_TAG | MARK_SNAT:08x}/9 masquerade"),
    # The mark has done its work once NAT is set up. Cleared, it cannot follow the packet any
    # further: a VXLAN device keeps the mark on the packet it wraps, whose own way out (through
    # these same hooks) would otherwise be DNATed by it.
    "clear-mark": ("type filter hook postrouting priority 200; policy accept;",
                   f"meta mark 0x{MARK_TAG:08x}/8 meta mark set 0x00000000"),
}

IPPROTO = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}
IPS_SEEN_REPLY = 1 << 1
IPS_ASSURED = 1 << 2
TCP_CONNTRACK_SYN_SENT, TCP_CONNTRACK_CLOSE = 1, 8
IPSET_PROTOCOL = 6
NFNLGRP_CONNTRACK_DESTROY = 3
CTA_STATUS, CTA_PROTOINFO, CTA_PROTOINFO_TCP, CTA_PROTOINFO_TCP_STATE = 3, 4, 1, 1
IPSET_ERR_EXIST = 4103


class NetfilterError(RuntimeError):
    pass


class Flow(NamedTuple):
    """A 5-tuple as the client sent it. A NamedTuple: one is made per queued packet, and a tuple
    is several times cheaper to create and hash than a frozen dataclass."""
    protocol: Protocol_
    src: str
    sport: int
    dst: str
    dport: int


@dataclass(frozen=True)
class FlowState:
    seen_reply: bool
    assured: bool
    tcp_state: int | None = None

    @property
    def opening(self) -> bool:
        """Still at the first SYN (ours, not yet seen by conntrack, or sent): a retransmission."""
        return self.tcp_state in (None, 0, TCP_CONNTRACK_SYN_SENT)

    @property
    def answered(self) -> bool:
        """The backend answered with something other than a refusal (a reset to the SYN)."""
        refused = self.tcp_state == TCP_CONNTRACK_CLOSE and not self.assured
        return self.seen_reply and not refused


@dataclass(frozen=True)
class RouteInfo:
    oif: int          # interface towards the backend
    src: str          # this node's address on that route (for hairpin SNAT)


class Netfilter(Protocol):
    def ensure_base(self, queue: int, queues: int = 1, cpu_fanout: bool = False) -> None:
        """ipsets, chains and rules in place, first packets to queues ``queue`` … ``queue + queues - 1``
        (spread by flow, or with ``cpu_fanout`` by the CPU that handles the packet). Idempotent:
        no writes when they already are."""

    def remove_base(self) -> None:
        """Remove every rule, chain, ipset and route created here (idempotent)."""

    def vip_members(self) -> set[VipKey]:
        """The VIPs in the ipset."""

    def update_vips(self, add: Iterable[VipKey], remove: Iterable[VipKey]) -> dict[VipKey, str]:
        """Add and remove ipset members; returns errors by VIP."""

    def base_intact(self, queue: int, queues: int = 1, cpu_fanout: bool = False) -> bool:
        """Whether what ``ensure_base`` makes is all there (read only: repair's drift check)."""

    def set_routes(self, prefixes: set[str]) -> dict[str, str]:
        """Exactly these prefixes ("11.0.0.0/8", "1.2.3.4/32") have our local routes; errors by prefix."""

    def local_routes(self) -> set[str]:
        """The prefixes that have our local routes."""

    def backend_ids(self) -> dict[int, Backend]:
        """The NAT map: backend id (as the mark carries it) → backend."""

    def update_backend_ids(self, add: dict[int, Backend], remove: Iterable[int]) -> None:
        """Add and remove NAT map entries, in one transaction."""

    def flow_states(self, flows: list[Flow]) -> list[FlowState | None]:
        """The conntrack entry of each flow (None: there is none), in one round trip."""

    def route_to(self, ip: str) -> RouteInfo | None:
        """How this node reaches ``ip`` (None: unreachable)."""

    def closed_flows(self) -> list[Flow]:
        """Flows whose conntrack entry ended since the last call (subscribes on the first call)."""


T = TypeVar("T")


class _Template:
    """A message pyroute2 encodes once, with sentinel values; each later message is that encoding
    with the real addresses and ports where the sentinels were. pyroute2 stays the one definition
    of the layout, and a conntrack entry costs about a microsecond of Python instead of ~300 µs.

    The encoding is cut at the sentinels once, so rendering is one ``bytes.join`` of constant
    pieces and the values (fields a call does not give keep their sentinel)."""

    def __init__(self, msg, subsys: int, kind: int, flags: int, fields: dict[str, bytes]) -> None:
        msg["nfgen_family"] = socket.AF_INET
        msg["header"]["type"] = (subsys << 8) | kind
        msg["header"]["flags"] = flags
        msg.encode()
        self.data = bytes(msg.data)
        self.slots: dict[str, list[int]] = {}
        for name, sentinel in fields.items():
            offsets, at = [], self.data.find(sentinel, 16)
            while at >= 0:
                offsets.append(at)
                at = self.data.find(sentinel, at + 1)
            if not offsets:
                raise NetfilterError(f"template: field {name} not found in the encoded message")
            self.slots[name] = offsets
        spots = sorted([(8, "seq", 4)] + [(offset, name, len(fields[name]))
                                         for name, offsets in self.slots.items() for offset in offsets])
        pieces: list[bytes | str] = []
        at = 0
        for offset, name, size in spots:
            pieces += [self.data[at:offset], name]
            at = offset + size
        pieces.append(self.data[at:])
        self._pieces = tuple(pieces)
        self._defaults = {**fields, "seq": self.data[8:12]}

    def render(self, seq: int, values: dict[str, bytes]) -> bytes:
        values = {**self._defaults, **values, "seq": _SEQ.pack(seq)}
        return b"".join([values[piece] if piece.__class__ is str else piece for piece in self._pieces])


_SEQ = struct.Struct("=I")


# Sentinels: TEST-NET-1 addresses and ports that occur nowhere else in the messages.
_S_CLIENT, _S_VIP = "192.0.2.11", "192.0.2.22"
_S_SPORT, _S_DPORT = 0xA1B1, 0xA2B2


def _ip(address: str) -> bytes:
    return socket.inet_aton(address)


def _port(port: int) -> bytes:
    return struct.pack("!H", port)


class _Netlink:
    """Requests over one NETLINK_NETFILTER socket.

    Synchronous on purpose: the kernel handles a netlink request inside the ``send`` call, so its
    answers are queued by the time ``send`` returns, and pyroute2's own sync API cannot run inside
    the agent's asyncio loop. Messages go out in chunks of ``CHUNK``, one ``send`` each."""

    CHUNK = 256     # bounded so answers never overflow the socket buffer

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind((0, 0))
        self.seq = 0
        self.lock = threading.Lock()
        # One receive buffer for good: ``recv(1 << 20)`` would allocate (and fault in) a fresh
        # megabyte per answer, which costs more than the kernel's whole answer.
        self._buffer = memoryview(bytearray(1 << 16))

    def _recv(self) -> bytes:
        return bytes(self._buffer[:self.sock.recv_into(self._buffer)])

    def _send_chunk(self, render: Callable[[T, int], bytes], chunk: list[T]) -> int:
        first = self.seq + 1
        self.seq += len(chunk)
        self.sock.send(b"".join([render(item, first + i) for i, item in enumerate(chunk)]))
        return first

    def batch(self, render: Callable[[T, int], bytes], items: list[T]) -> list[int]:
        """Send one message per item (``render(item, seq)``), each acked; the errno of each (0 = ok)."""
        results: list[int] = []
        with self.lock:
            for start in range(0, len(items), self.CHUNK):
                chunk = items[start:start + self.CHUNK]
                first = self._send_chunk(render, chunk)
                acks: dict[int, int] = {}
                while len(acks) < len(chunk):
                    for seq, mtype, message in _messages(self._recv()):
                        if mtype == NLMSG_ERROR:
                            acks[seq] = _errno(message)
                results.extend(acks.get(first + i, 0) for i in range(len(chunk)))
        return results

    def get_many(self, render: Callable[[T, int], bytes], items: list[T]) -> list[bytes | None]:
        """One acked GET per item: each answer's attributes (after the nfgenmsg), None where the
        kernel said ENOENT; any other refusal raises."""
        answers: list[bytes | None] = []
        with self.lock:
            for start in range(0, len(items), self.CHUNK):
                chunk = items[start:start + self.CHUNK]
                first = self._send_chunk(render, chunk)
                got: dict[int, bytes | None] = {}
                done: set[int] = set()
                failed = 0
                while len(done) < len(chunk):
                    for seq, mtype, message in _messages(self._recv()):
                        if mtype == NLMSG_ERROR:
                            done.add(seq)
                            errno = _errno(message)
                            if errno and errno != ENOENT:
                                failed = errno
                        else:
                            got[seq] = message[20:]
                if failed:
                    raise NetfilterError(f"netlink error {failed}")
                answers.extend(got.get(first + i) for i in range(len(chunk)))
        return answers

    def close(self) -> None:
        self.sock.close()


NLMSG_ERROR = 2


def _messages(data: bytes):
    """(seq, type, message bytes) of each netlink message in one datagram."""
    offset = 0
    while offset + 16 <= len(data):
        length, mtype, _, seq = struct.unpack_from("=IHHI", data, offset)
        if length < 16:
            return
        yield seq, mtype, data[offset:offset + length]
        offset += (length + 3) & ~3


def _errno(message: bytes) -> int:
    """The errno of an NLMSG_ERROR (0: the ack of a request that went in)."""
    return -struct.unpack_from("=i", message, 16)[0]


def _attrs(data: bytes) -> dict[int, bytes]:
    """Top-level netlink attributes by type (nested flag masked). Reading two fields of a GET
    answer this way costs microseconds; a full pyroute2 decode costs hundreds."""
    out, offset = {}, 0
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            break
        out[kind & 0x3FFF] = data[offset + 4:offset + length]
        offset += (length + 3) & ~3
    return out


def _flow_state(answer: bytes) -> FlowState:
    attrs = _attrs(answer)
    status = struct.unpack("!I", attrs[CTA_STATUS][:4])[0] if CTA_STATUS in attrs else 0
    tcp = _attrs(_attrs(attrs.get(CTA_PROTOINFO, b"")).get(CTA_PROTOINFO_TCP, b""))
    state = tcp[CTA_PROTOINFO_TCP_STATE][0] if CTA_PROTOINFO_TCP_STATE in tcp else None
    return FlowState(bool(status & IPS_SEEN_REPLY), bool(status & IPS_ASSURED), state)


def _tuple(flow: Flow) -> NFCTAttrTuple:
    return NFCTAttrTuple(saddr=flow.src, daddr=flow.dst, proto=IPPROTO[flow.protocol],
                         sport=flow.sport, dport=flow.dport)


def _ipset_entry(set_name: str, data: list) -> ipset_msg:
    msg = ipset_msg()
    msg["attrs"] = [["IPSET_ATTR_PROTOCOL", IPSET_PROTOCOL], ["IPSET_ATTR_SETNAME", set_name],
                    ["IPSET_ATTR_DATA", {"attrs": data}]]
    return msg


def _ipv4(address: str) -> dict:
    return {"attrs": [["IPSET_ATTR_IPADDR_IPV4", address]]}


def _flow_values(flow: Flow) -> dict[str, bytes]:
    return {"client": _ip(flow.src), "sport": _port(flow.sport), "vip": _ip(flow.dst), "dport": _port(flow.dport)}


class _Templates:
    """The few message shapes the dataplane sends, encoded by pyroute2 once each (lazily)."""

    def __init__(self) -> None:
        self._cache: dict[tuple, _Template] = {}

    def _get(self, key: tuple, build: Callable[[], _Template]) -> _Template:
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def _fields(self, *names: str) -> dict[str, bytes]:
        every = {"client": _ip(_S_CLIENT), "sport": _port(_S_SPORT), "vip": _ip(_S_VIP), "dport": _port(_S_DPORT)}
        return {name: every[name] for name in names}

    def by_tuple(self, kind: int, protocol: Protocol_) -> _Template:
        """GET or DELETE of one entry by its original tuple."""
        def build() -> _Template:
            flow = Flow(protocol, _S_CLIENT, _S_SPORT, _S_VIP, _S_DPORT)
            return _Template(nfct_msg.create_from(tuple_orig=_tuple(flow)), NFNL_SUBSYS_CTNETLINK,
                             kind, NLM_F_REQUEST | NLM_F_ACK, self._fields("client", "sport", "vip", "dport"))
        return self._get(("tuple", kind, protocol), build)

    def member(self, cmd: int, protocol: Protocol_) -> _Template:
        def build() -> _Template:
            msg = _ipset_entry(VIP_SET, [["IPSET_ATTR_IP", _ipv4(_S_VIP)], ["IPSET_ATTR_PORT", _S_DPORT],
                                         ["IPSET_ATTR_PROTO", IPPROTO[protocol]]])
            return _Template(msg, NFNL_SUBSYS_IPSET, cmd, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE,
                             self._fields("vip", "dport"))
        return self._get(("member", cmd, protocol), build)



def _our_routes(ipr) -> set[str]:
    return {f"{r.get_attr('RTA_DST')}/{r['dst_len']}" for r in ipr.get_routes(table=255, proto=ROUTE_PROTO)}


def _map_changes(add: dict[int, Backend], remove: Iterable[int]) -> list[str]:
    """nft commands that take ``remove`` out of the NAT map and put ``add`` in."""
    remove = sorted(set(remove))
    lines = []
    if remove:
        lines.append(f"delete element ip {NAT_TABLE} {BACKEND_MAP} {{ {', '.join(map(str, remove))} }}")
    if add:
        elements = ", ".join(f"{key} : {b.ip} . {b.port}" for key, b in sorted(add.items()))
        lines.append(f"add element ip {NAT_TABLE} {BACKEND_MAP} {{ {elements} }}")
    return lines


def _run(*argv: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise NetfilterError(f"{' '.join(argv[:3])}…: {done.stderr.strip() or done.stdout.strip()}")
    return done


class KernelNetfilter:
    """The real seam; must be created in (and used from) the node's network namespace."""

    def __init__(self, node_ip: str | None = None) -> None:
        self.node_ip = node_ip
        self._netlink = _Netlink()
        self._templates = _Templates()
        # pyroute2's sync API runs its own event loop: keep it on a thread of its own.
        self._pyroute2 = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pyroute2")
        self._ipr: IPRoute | None = None
        self._events: socket.socket | None = None

    def _route_call(self, fn: Callable[[IPRoute], T]) -> T:
        def call() -> T:
            if self._ipr is None:
                self._ipr = IPRoute()
            return fn(self._ipr)
        return self._pyroute2.submit(call).result()

    # -- rules and sets -------------------------------------------------------------------
    def _rules(self, queue: int, queues: int = 1, cpu_fanout: bool = False) -> dict[str, dict[str, list[str]]]:
        target = f"--queue-num {queue}" if queues == 1 else f"--queue-balance {queue}:{queue + queues - 1}"
        q = f"-j NFQUEUE {target} --queue-bypass" + (" --queue-cpu-fanout" if cpu_fanout and queues > 1 else "")
        vip = f"-m set --match-set {VIP_SET} dst,dst"
        return {
            # Every packet passes these chains: the conntrack state (read off the packet) is
            # tested before the set (a hash lookup), so a flow's later packets skip the lookup.
            # A flow stays NEW until its first reply; one already DNATed (a SYN retransmitted to
            # a slow backend, the next datagram of one-way UDP) goes on without userspace.
            "mangle": {QUEUE_CHAIN: [
                f"-p tcp -m conntrack --ctstate NEW -m conntrack ! --ctstate DNAT {vip} {q}",
                f"-p udp -m conntrack --ctstate NEW -m conntrack ! --ctstate DNAT {vip} {q}",
            ], "from": ["PREROUTING", "OUTPUT"]},
            "filter": {REJECT_CHAIN: [
                f"-p tcp -m conntrack --ctstate NEW {vip} -m conntrack ! --ctstate DNAT -j REJECT --reject-with tcp-reset",
                f"-m conntrack --ctstate NEW {vip} -m conntrack ! --ctstate DNAT -j REJECT --reject-with icmp-port-unreachable",
            ], "from": ["INPUT", "FORWARD", "OUTPUT"]},
        }

    def ensure_base(self, queue: int, queues: int = 1, cpu_fanout: bool = False) -> None:
        _run("ipset", "create", VIP_SET, "hash:ip,port", "maxelem", "1048576", "-exist")
        self._ensure_nat_table()
        for table, chain, want, parents in self._chains(queue, queues, cpu_fanout):
            if not self._chain_is(table, chain, want):
                text = f"*{table}\n:{chain} - [0:0]\n" + "".join(f"{r}\n" for r in want) + "COMMIT\n"
                _run("iptables-restore", "-w", "--noflush", stdin=text)
            for parent in parents:
                if not self._jumps(table, parent, chain):
                    _run("iptables", "-w", "-t", table, "-I", parent, "1", "-j", chain)
        self._remove_chains(LEGACY_CHAINS)
        for name in LEGACY_SETS:
            _run("ipset", "destroy", name, check=False)

    def base_intact(self, queue: int, queues: int = 1, cpu_fanout: bool = False) -> bool:
        if _run("ipset", "list", "-n", VIP_SET, check=False).returncode != 0:
            return False
        listing = _run("nft", "list", "table", "ip", NAT_TABLE, check=False)
        if listing.returncode != 0 or _nat_chains(listing.stdout) != _NAT_CHAINS:
            return False
        return all(self._chain_is(table, chain, want) and all(self._jumps(table, p, chain) for p in parents)
                   for table, chain, want, parents in self._chains(queue, queues, cpu_fanout))

    def _chains(self, queue: int, queues: int, cpu_fanout: bool):
        """(table, chain, its rules as ``iptables -S`` prints them, the chains that jump to it)."""
        for table, spec in self._rules(queue, queues, cpu_fanout).items():
            parents = spec.pop("from")
            (chain, rules), = spec.items()
            yield table, chain, [f"-A {chain} {rule}" for rule in rules], parents

    @staticmethod
    def _chain_is(table: str, chain: str, want: list[str]) -> bool:
        have = _run("iptables", "-w", "-t", table, "-S", chain, check=False)
        return have.returncode == 0 and _normalised(have.stdout, chain) == [_squash(r) for r in want]

    @staticmethod
    def _jumps(table: str, parent: str, chain: str) -> bool:
        return _run("iptables", "-w", "-t", table, "-C", parent, "-j", chain, check=False).returncode == 0

    def _ensure_nat_table(self) -> None:
        """The NAT table as ``_NAT_CHAINS`` says, its map kept: rewritten only when it differs."""
        listing = _run("nft", "list", "table", "ip", NAT_TABLE, check=False)
        if listing.returncode == 0 and _nat_chains(listing.stdout) == _NAT_CHAINS:
            return
        keep = self.backend_ids() if listing.returncode == 0 else {}
        chains = "".join(f"  chain {name} {{ {hook} {rule}; }}\n" for name, (hook, rule) in _NAT_CHAINS.items())
        _run("nft", "-f", "-", stdin=(     # one transaction: no moment without the NAT rules or the map
            f"table ip {NAT_TABLE}\ndelete table ip {NAT_TABLE}\n"
            f"table ip {NAT_TABLE} {{\n  map {BACKEND_MAP} {{ type mark : ipv4_addr . inet_service; }}\n{chains}}}\n"
            + "".join(f"{line}\n" for line in _map_changes(keep, ()))))

    @staticmethod
    def _remove_chains(chains: dict[str, tuple[str, tuple[str, ...]]]) -> None:
        for table, (chain, parents) in chains.items():
            if _run("iptables", "-w", "-t", table, "-S", chain, check=False).returncode != 0:
                continue
            for parent in parents:
                while _run("iptables", "-w", "-t", table, "-D", parent, "-j", chain, check=False).returncode == 0:
                    pass
            _run("iptables", "-w", "-t", table, "-F", chain, check=False)
            _run("iptables", "-w", "-t", table, "-X", chain, check=False)

    def remove_base(self) -> None:
        ours = {table: (chain, tuple(spec["from"])) for table, spec in self._rules(0).items()
                for chain in spec if chain != "from"}
        self._remove_chains(ours)
        self._remove_chains(LEGACY_CHAINS)
        _run("nft", "delete", "table", "ip", NAT_TABLE, check=False)
        self.set_routes(set())
        for name in (VIP_SET, *LEGACY_SETS):
            _run("ipset", "destroy", name, check=False)

    def backend_ids(self) -> dict[int, Backend]:
        done = _run("nft", "-j", "list", "map", "ip", NAT_TABLE, BACKEND_MAP, check=False)
        if done.returncode != 0:
            if "No such file or directory" in done.stderr:
                return {}      # no map yet
            # Not "empty": every backend would get a second id, and the first ones would stay.
            raise NetfilterError(f"nft list map {BACKEND_MAP}: {done.stderr.strip()}")
        ids = {}
        for item in json.loads(done.stdout).get("nftables", []):
            for key, value in item.get("map", {}).get("elem", []):
                address, port = value["concat"]
                ids[int(key)] = Backend(address, int(port))
        return ids

    def update_backend_ids(self, add: dict[int, Backend], remove: Iterable[int]) -> None:
        lines = _map_changes(add, remove)
        if lines:
            _run("nft", "-f", "-", stdin="\n".join(lines) + "\n")

    def vip_members(self) -> set[VipKey]:
        done = _run("ipset", "save", VIP_SET, check=False)
        members = set()
        for line in done.stdout.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] == "add":
                address, proto_port = parts[2].split(",", 1)
                proto, port = proto_port.split(":")
                if proto in IPPROTO:
                    members.add(VipKey(address, int(port), proto))
        return members

    def update_vips(self, add: Iterable[VipKey], remove: Iterable[VipKey]) -> dict[VipKey, str]:
        errors: dict[VipKey, str] = {}
        for keys, cmd in ((list(remove), IPSET_CMD_DEL), (list(add), IPSET_CMD_ADD)):
            def render(key: VipKey, seq: int, cmd: int = cmd) -> bytes:
                return self._templates.member(cmd, key.protocol).render(
                    seq, {"vip": _ip(key.address), "dport": _port(key.port)})
            for key, code in zip(keys, self._netlink.batch(render, keys), strict=True):
                if code and code not in (EEXIST, IPSET_ERR_EXIST):   # already there / already gone
                    errors[key] = f"ipset {'add' if cmd == IPSET_CMD_ADD else 'del'} failed: errno {code}"
        return errors

    def local_routes(self) -> set[str]:
        return self._route_call(_our_routes)

    def set_routes(self, prefixes: set[str]) -> dict[str, str]:
        def sync(ipr: IPRoute) -> dict[str, str]:
            lo = ipr.link_lookup(ifname="lo")[0]
            have = _our_routes(ipr)
            errors: dict[str, str] = {}
            for prefix in have - prefixes:
                try:
                    ipr.route("del", dst=prefix, table=255, type="local", proto=ROUTE_PROTO, oif=lo, scope=254)
                except Exception as exc:   # gone already is fine; anything else is reported
                    if getattr(exc, "code", None) != 3:
                        errors[prefix] = f"route {prefix}: {exc}"
            for prefix in sorted(prefixes - have):
                # The node IP as source keeps local clients off the VIP as their address; if it is
                # not (yet) local here the kernel refuses it, and VIP-sourced flows get SNAT instead.
                for extra in ([{"prefsrc": self.node_ip}] if self.node_ip else []) + [{}]:
                    try:
                        ipr.route("add", dst=prefix, table=255, type="local", proto=ROUTE_PROTO,
                                  oif=lo, scope=254, **extra)
                        errors.pop(prefix, None)
                        break
                    except Exception as exc:   # pyroute2's NetlinkError; one bad route is one error
                        errors[prefix] = f"route {prefix}: {exc}"
            return errors
        return self._route_call(sync)

    # -- flows ----------------------------------------------------------------------------
    def flow_states(self, flows: list[Flow]) -> list[FlowState | None]:
        def render(flow: Flow, seq: int) -> bytes:
            return self._templates.by_tuple(IPCTNL_MSG_CT_GET, flow.protocol).render(seq, _flow_values(flow))
        return [None if answer is None else _flow_state(answer) for answer in self._netlink.get_many(render, flows)]

    def route_to(self, ip: str) -> RouteInfo | None:
        def lookup(ipr: IPRoute) -> RouteInfo | None:
            try:
                route, = ipr.route("get", dst=ip)
            except Exception:     # unreachable: no route
                return None
            return RouteInfo(route.get_attr("RTA_OIF"), route.get_attr("RTA_PREFSRC") or self.node_ip or "")
        return self._route_call(lookup)

    def closed_flows(self) -> list[Flow]:
        if self._events is None:
            self._events = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
            self._events.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            self._events.bind((0, 1 << (NFNLGRP_CONNTRACK_DESTROY - 1)))
            self._events.setblocking(False)
        flows = []
        while True:
            try:
                data = self._events.recv(1 << 16)
            except BlockingIOError:
                return flows
            except OSError:      # ENOBUFS: events were lost; the counts heal as flows end
                continue
            offset = 0
            while offset < len(data):
                length = struct.unpack_from("=I", data, offset)[0]
                msg = nfct_msg(data[offset:offset + length])
                msg.decode()
                offset += (length + 3) & ~3
                flow = _flow_of(msg)
                if flow is not None:
                    flows.append(flow)

    def close(self) -> None:
        self._netlink.close()
        if self._events is not None:
            self._events.close()

        def shut() -> None:
            if self._ipr is not None:
                self._ipr.close()
        self._pyroute2.submit(shut).result()
        self._pyroute2.shutdown()


def _flow_of(msg) -> Flow | None:
    orig = msg.get_attr("CTA_TUPLE_ORIG")
    if orig is None:
        return None
    ip, proto = orig.get_attr("CTA_TUPLE_IP"), orig.get_attr("CTA_TUPLE_PROTO")
    protocol = {socket.IPPROTO_TCP: "tcp", socket.IPPROTO_UDP: "udp"}.get(proto.get_attr("CTA_PROTO_NUM"))
    if protocol is None:
        return None
    return Flow(protocol, ip.get_attr("CTA_IP_V4_SRC"), proto.get_attr("CTA_PROTO_SRC_PORT"),
                ip.get_attr("CTA_IP_V4_DST"), proto.get_attr("CTA_PROTO_DST_PORT"))


def _nat_chains(listing: str) -> dict[str, tuple[str, str]]:
    """Chain name → (hook line, rule) of an ``nft list table`` listing (chains of one rule)."""
    chains: dict[str, tuple[str, str]] = {}
    name, lines = None, []
    for line in (raw.strip() for raw in listing.splitlines()):
        if line.startswith("chain ") and line.endswith("{"):
            name, lines = line.split()[1], []
        elif name and line == "}":
            chains[name] = (lines[0], lines[1]) if len(lines) == 2 else ("", " ".join(lines))
            name = None
        elif name and line:
            lines.append(line)
    return chains


def _squash(rule: str) -> str:
    return " ".join(rule.split())


def _normalised(listing: str, chain: str) -> list[str]:
    return [_squash(line) for line in listing.splitlines() if line.startswith(f"-A {chain} ")]


@dataclass
class FakeNetfilter:
    """In memory: what ``KernelNetfilter`` would hold, with routes given by ``neighbours``."""

    base: bool = False
    queue: tuple[int, int, bool] | None = None     # first queue, how many, CPU fanout
    members: set[VipKey] = field(default_factory=set)
    routes: set[str] = field(default_factory=set)
    nat_map: dict[int, Backend] = field(default_factory=dict)
    states: dict[Flow, FlowState] = field(default_factory=dict)
    neighbours: dict[str, RouteInfo] = field(default_factory=dict)
    closed: list[Flow] = field(default_factory=list)
    writes: int = 0
    round_trips: int = 0       # flow_states calls (each one netlink send in the kernel)

    def ensure_base(self, queue: int, queues: int = 1, cpu_fanout: bool = False) -> None:
        if not self.base or self.queue != (queue, queues, cpu_fanout):
            self.base, self.queue = True, (queue, queues, cpu_fanout)
            self.writes += 1

    def remove_base(self) -> None:
        self.base, self.members, self.routes, self.nat_map = False, set(), set(), {}

    def base_intact(self, queue: int, queues: int = 1, cpu_fanout: bool = False) -> bool:
        return self.base and self.queue == (queue, queues, cpu_fanout)

    def local_routes(self) -> set[str]:
        return set(self.routes)

    def vip_members(self) -> set[VipKey]:
        return set(self.members)

    def update_vips(self, add: Iterable[VipKey], remove: Iterable[VipKey]) -> dict[VipKey, str]:
        for key in remove:
            self.members.discard(key)
            self.writes += 1
        for key in add:
            self.members.add(key)
            self.writes += 1
        return {}

    def set_routes(self, prefixes: set[str]) -> dict[str, str]:
        if prefixes != self.routes:
            self.routes = set(prefixes)
            self.writes += 1
        return {}

    def backend_ids(self) -> dict[int, Backend]:
        return dict(self.nat_map)

    def update_backend_ids(self, add: dict[int, Backend], remove: Iterable[int]) -> None:
        for key in remove:
            self.nat_map.pop(key, None)
        self.nat_map.update(add)
        self.writes += 1

    def flow_states(self, flows: list[Flow]) -> list[FlowState | None]:
        self.round_trips += 1
        return [self.states.get(flow) for flow in flows]

    def route_to(self, ip: str) -> RouteInfo | None:
        if ip in self.neighbours:
            return self.neighbours[ip]
        return RouteInfo(1, "10.0.0.1") if ipaddress.ip_address(ip) else None

    def closed_flows(self) -> list[Flow]:
        done, self.closed = self.closed, []
        return done

    def close(self) -> None:
        pass
