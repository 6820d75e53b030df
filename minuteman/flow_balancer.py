"""The NFQUEUE dataplane's per-packet decision, pure: the first packet of a VIP flow in, a mark out.

A queue worker (``minuteman/nfqueue_worker.py``) holds one ``FlowBalancer`` and asks it about
every packet it reads; the mark it returns names the backend in the kernel's NAT map (and asks
for source NAT where replies would otherwise bypass the node). What the balancer saw goes back
to the agent as a ``Report``: new connections per VIP and backend, and a bounded sample of TCP
flows per backend whose conntrack outcome the agent checks for passive health.

```
agent ── WorkerVip per VIP (backend ids, Maglev lookup, route per backend) ──► FlowBalancer
packet ── (dst, proto, dport) → VIP; crc32(5-tuple) → Maglev slot → backend id → mark
       ◄── Report (connections, health samples) every REPORT_INTERVAL
```

Only header bytes are read, with plain indexing: per packet, anything more (scapy, struct,
building objects) costs more than all the rest.
"""

from __future__ import annotations

import pickle
import random
import socket
import struct
import time
import zlib
from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import NamedTuple

from minuteman.dataplane import Backend, VipKey
from minuteman.netfilter import MARK_SNAT, MARK_TAG, Flow
from minuteman.p2c import OpenConnections, p2c_choose

PROTOCOLS = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}
SAMPLES_PER_BACKEND = 8       # health samples per backend per report (80/s): plenty for "5 failures in a row"
MAX_SAMPLES = 4096
MAX_OPEN_FLOWS = 1 << 18      # p2c: flows followed until conntrack says they ended
REPORT_INTERVAL = 0.1         # s
RECENT_FLOWS_SECONDS = 1.0    # how long a decided flow is remembered (a generation; two are kept)


class WorkerVip(NamedTuple):
    """One VIP as a worker needs it. ``lookup``: the Maglev table as unsigned shorts (indices into
    ``backends``), empty for power-of-two-choices; ``oifs``: the interface towards each backend."""
    key: VipKey
    backends: tuple[Backend, ...]
    ids: tuple[int, ...]
    oifs: tuple[int, ...]
    lookup: bytes = b""


def packet_key(key: VipKey) -> tuple[bytes, int, bytes]:
    """A VIP as its packets carry it: destination address, IP protocol, destination port."""
    return socket.inet_aton(key.address), PROTOCOLS[key.protocol], key.port.to_bytes(2, "big")


def lookup_bytes(lookup: tuple[int, ...]) -> bytes:
    return array("H", lookup).tobytes()


@dataclass
class Report:
    """What a worker saw since its last report."""
    connections: Counter = field(default_factory=Counter)      # (VipKey, Backend) → new flows
    samples: list[tuple[Flow, Backend]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.connections or self.samples)


class _Entry:
    __slots__ = ("vip", "lookup", "size", "counts", "p2c")

    def __init__(self, vip: WorkerVip) -> None:
        self.vip = vip
        self.lookup = memoryview(vip.lookup).cast("H") if vip.lookup else None
        self.size = len(self.lookup) if self.lookup is not None else 0
        self.counts = [0] * len(vip.backends)
        self.p2c = self.lookup is None


class FlowBalancer:
    def __init__(self, rng: random.Random | None = None, clock=time.monotonic) -> None:
        self._vips: dict[tuple[bytes, int, bytes], _Entry] = {}
        self._touched: set[_Entry] = set()
        self._sampled: Counter[int] = Counter()       # samples per backend id this report
        self._samples: list[tuple[bytes, int, _Entry]] = []
        self._pending = Report()                      # counts of entries replaced since the last report
        self._rng = rng or random.Random()
        self._open = OpenConnections()
        self._flows_to: dict[Flow, Backend] = {}
        self.needs_closed_flows = False
        # Flows decided lately (protocol, addresses, ports → mark). Until a flow's first reply
        # conntrack calls each of its packets NEW, and packets that arrive before the first
        # verdict are queued too (a burst of datagrams, a SYN retransmitted meanwhile): they
        # get the same backend and are not counted again.
        self._recent: dict[bytes, int] = {}
        self._older: dict[bytes, int] = {}
        self._clock = clock
        self._recent_since = clock()

    # -- the table (from the agent) ---------------------------------------------------------
    def update(self, vips: dict[VipKey, WorkerVip], drop: list[VipKey] = (), full: bool = False) -> None:
        """Take new or changed VIPs and drop removed ones; ``full``: ``vips`` is the whole table."""
        if full:
            self._fold(self._vips.values())
            self._vips = {}
        for key in drop:
            entry = self._vips.pop(packet_key(key), None)
            if entry is not None:
                self._fold([entry])
        for key, vip in vips.items():
            old = self._vips.get(packet_key(key))
            if old is not None:
                self._fold([old])
            self._vips[packet_key(key)] = _Entry(vip)
        # The recent flows' marks stay good: a removed backend's id stays in the kernel's map
        # for longer (nfqueue.ID_GRACE_SECONDS) than a flow is remembered.
        self.needs_closed_flows = any(entry.p2c for entry in self._vips.values())

    # -- packets -----------------------------------------------------------------------------
    def mark_for(self, payload: bytes, indev: int = 0) -> int:
        """The mark for the first packet of a flow (IPv4 bytes, input interface; 0 for locally
        sent); 0 when it is no VIP with backends (the packet is then rejected)."""
        if len(payload) < 20:
            return 0
        ihl = (payload[0] & 0x0F) << 2
        if len(payload) < ihl + 4:
            return 0
        entry = self._vips.get((payload[16:20], payload[9], payload[ihl + 2:ihl + 4]))
        if entry is None or not entry.counts:
            return 0
        flow = payload[12:20] + payload[ihl:ihl + 4]
        decided = flow + payload[9:10]
        seen = self._recent.get(decided) or self._older.get(decided)
        if seen:
            return seen
        vip = entry.vip
        if entry.lookup is not None:
            # The Maglev slot of the 5-tuple as the packet carries it (addresses, ports).
            index = entry.lookup[zlib.crc32(flow) % entry.size]
        else:
            index = self._p2c(entry, payload, ihl)
        backend_id = vip.ids[index]
        mark = MARK_TAG | backend_id
        # Source NAT where replies would otherwise bypass this node: a local client that got
        # the VIP itself as source, or a forwarded client on the backend's own link (hairpin).
        if payload[12:16] == payload[16:20] or (indev and indev == vip.oifs[index]):
            mark |= MARK_SNAT
        entry.counts[index] += 1
        self._touched.add(entry)
        self._recent[decided] = mark
        if payload[9] == socket.IPPROTO_TCP and self._sampled[backend_id] < SAMPLES_PER_BACKEND \
                and len(self._samples) < MAX_SAMPLES:
            self._sampled[backend_id] += 1
            self._samples.append((flow, index, entry))
        return mark

    def _p2c(self, entry: _Entry, payload: bytes, ihl: int) -> int:
        """No Maglev table: power of two choices over the flows this worker still has open."""
        backends = entry.vip.backends
        chosen = p2c_choose(backends, self._open, self._rng) or backends[0]
        self._open.opened(chosen)
        self._flows_to[_flow(entry.vip.key, payload[12:20] + payload[ihl:ihl + 4])] = chosen
        if len(self._flows_to) > MAX_OPEN_FLOWS:
            # The oldest is taken as ended: its end was missed (a SYN that was never confirmed,
            # a destroy event lost to a full socket buffer) or it is long-lived either way.
            self._open.closed(self._flows_to.pop(next(iter(self._flows_to))))
        return backends.index(chosen)

    def flows_closed(self, flows: list[Flow]) -> None:
        for flow in flows:
            backend = self._flows_to.pop(flow, None)
            if backend is not None:
                self._open.closed(backend)

    # -- reports -----------------------------------------------------------------------------
    def _fold(self, entries) -> None:
        for entry in entries:
            for backend, count in zip(entry.vip.backends, entry.counts, strict=True):
                if count:
                    self._pending.connections[entry.vip.key, backend] += count
            entry.counts = [0] * len(entry.counts)
        self._touched.difference_update(entries)

    def take_report(self) -> Report:
        """Everything seen since the last report."""
        now = self._clock()
        if now - self._recent_since >= RECENT_FLOWS_SECONDS:
            self._older, self._recent, self._recent_since = self._recent, {}, now
        self._fold(list(self._touched))
        for tuple_bytes, index, entry in self._samples:
            self._pending.samples.append((_flow(entry.vip.key, tuple_bytes), entry.vip.backends[index]))
        self._samples.clear()
        self._sampled.clear()
        report, self._pending = self._pending, Report()
        return report


def _flow(key: VipKey, addresses_ports: bytes) -> Flow:
    """The flow of 12 bytes: source, destination address, source, destination port."""
    sport, dport = struct.unpack_from("!HH", addresses_ports, 8)
    return Flow(key.protocol, socket.inet_ntoa(addresses_ports[:4]), sport, socket.inet_ntoa(addresses_ports[4:8]),
                dport)


# -- the wire between the agent and its workers: length-prefixed pickles (one trust domain) --
_LENGTH = struct.Struct("!I")


def frame(message: object) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(body)) + body


class FrameReader:
    """Whole messages out of a byte stream fed in pieces."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[object]:
        self._buffer += data
        messages = []
        while len(self._buffer) >= 4:
            length = _LENGTH.unpack_from(self._buffer)[0]
            if len(self._buffer) < 4 + length:
                break
            messages.append(pickle.loads(bytes(self._buffer[4:4 + length])))
            del self._buffer[:4 + length]
        return messages
