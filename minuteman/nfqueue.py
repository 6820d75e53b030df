"""The NFQUEUE dataplane: the first packet of a VIP flow comes to the agent, the rest stays in the kernel.

```
client ─SYN→ 11.0.0.1:80 ─► raw: in navstar-mm-vips? ─► NFQUEUE ─► agent: Maglev slot of the
                                                                  5-tuple → backend; conntrack
                                                                  entry with DNAT (+ hairpin SNAT)
       ◄──────── conntrack carries the rest of the flow (NAT both ways) ◄── accept
agent down: --queue-bypass lets the SYN on un-NATed → filter REJECT → the client fails at once
```

Per-packet cost does not depend on the number of VIPs: one ipset lookup (hash) in raw, and only
new flows reach userspace. The table and the backends picked live in this process; a state file
keeps the table across restarts so a restarted agent serves at once and adopts what it finds.
Each queue (one per CPU by default) has a reader thread (``_QueueReader``): it drains every packet
queued at a wake-up, balances them with one conntrack send (``handle_batch``) and accepts them with
one batch verdict, sent without the GIL; the asyncio loop never touches packets. Feeds ``health``
through ``drain_outcomes`` (a bounded sample of SYNs per backend is checked ``reply_timeout``
later: answered, refused (entry gone or reset) or unanswered).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import os
import random
import select
import signal
import socket
import struct
import sys
import threading
import time
import zlib
from collections import Counter, deque
from collections.abc import Callable
from errno import EEXIST
from pathlib import Path

from minuteman.dataplane import ApplyResult, Backend, VipEntry, VipKey
from minuteman.maglev import maglev_table
from minuteman.netfilter import Flow, FlowNat, KernelNetfilter, Netfilter, NetfilterError, RouteInfo
from minuteman.p2c import OpenConnections, p2c_choose

log = logging.getLogger("navstar.minuteman.nfqueue")

DEFAULT_QUEUE = 50
PROTOCOLS = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}
QUEUE_MAXLEN = 8192           # packets the kernel holds for the agent before it drops new ones
COPY_BYTES = 128              # of each queued packet: the IPv4 header (≤ 60 bytes) and the ports
BATCH = 64                    # queued packets balanced with one conntrack round trip, at most
MAX_QUEUES = 4
NETLINK_NETFILTER = 12
NLM_F_REQUEST = 1
MAX_PENDING_CHECKS = 4096     # SYNs awaiting their health check; beyond this they go unchecked
CHECKS_PER_BACKEND = 32       # … and at most this many per backend: enough for "5 failures in a row"
ROUTE_CACHE_SECONDS = 30.0


NAMED_VIP_POOL = ipaddress.ip_network("11.0.0.0/8")


def vip_prefix(address: str) -> str:
    """The local route that carries a VIP: one for the whole named pool, /32 for the others."""
    return str(NAMED_VIP_POOL) if ipaddress.ip_address(address) in NAMED_VIP_POOL else f"{address}/32"


def default_state_path() -> Path:
    """One state file per network namespace (lab agents share a filesystem, not a namespace)."""
    return Path("/run/navstar/minuteman") / f"nfqueue-netns-{os.stat('/proc/self/ns/net').st_ino}.json"


class NfqueueDataplane:
    name = "nfqueue"

    def __init__(self, *, node_ip: str | None = None, queue: int = DEFAULT_QUEUE, queues: int | None = None,
                 pin: bool = False, netfilter: Netfilter | None = None, state_path: Path | None = None,
                 reply_timeout: float = 0.4, clock=time.monotonic, rng: random.Random | None = None) -> None:
        """``queues`` (default: one per CPU, at most 4) from number ``queue`` on, each with a reader
        thread; with ``pin`` each CPU's packets go to its own queue, read by a thread pinned to it."""
        self.queue = queue
        self.queue_numbers = range(queue, queue + (queues or min(os.cpu_count() or 1, MAX_QUEUES)))
        self.pin = pin
        self.netfilter = netfilter if netfilter is not None else KernelNetfilter(node_ip)
        self.state_path = state_path or default_state_path()
        self.reply_timeout = reply_timeout
        self._clock = clock
        self._rng = rng or random.Random()
        self._table: dict[VipKey, VipEntry] = {}
        self._vips: dict[tuple[bytes, int, bytes], VipEntry] = {}   # by (address, protocol, port) as in the packet
        self._set_table(self._load_state())
        self._counts: Counter[tuple[VipKey, Backend]] = Counter()
        self._open = OpenConnections()
        self._flows_to: dict[Flow, Backend] = {}        # P2C flows, to count their end
        self._pending: deque[tuple[float, Flow, Backend]] = deque()
        self._checking: Counter[Backend] = Counter()    # pending checks per backend
        self._routes: dict[str, tuple[float, RouteInfo | None]] = {}
        self._lock = threading.Lock()    # the reader threads and the loop share the state above
        self._readers: list[_QueueReader] = []

    # -- the seam ------------------------------------------------------------------------
    def apply(self, table: dict[VipKey, VipEntry]) -> ApplyResult:
        result = ApplyResult()
        try:
            self.netfilter.ensure_base(self.queue, len(self.queue_numbers), cpu_fanout=self.pin)
            have = self.netfilter.vip_members()
            errors = self.netfilter.update_vips(set(table) - have, have - set(table))
            route_errors = self.netfilter.set_routes({vip_prefix(key.address) for key in table})
        except NetfilterError as exc:
            result.errors = {key: str(exc) for key in table}
            return result
        for key in table:
            if key in errors or vip_prefix(key.address) in route_errors:
                result.errors[key] = errors.get(key) or route_errors[vip_prefix(key.address)]
        result.removed = have - set(table)
        result.programmed = set(table) - set(result.errors)
        self._set_table({key: table[key] for key in result.programmed})
        self._save_state()
        return result

    def _set_table(self, table: dict[VipKey, VipEntry]) -> None:
        self._table = table
        self._vips = {(socket.inet_aton(key.address), PROTOCOLS[key.protocol], key.port.to_bytes(2, "big")): entry
                      for key, entry in table.items()}

    def current(self) -> dict[VipKey, VipEntry]:
        """VIPs in the ipset, with the backends this agent (or its predecessor) gave them."""
        return {key: self._table.get(key, VipEntry(key, ())) for key in self.netfilter.vip_members()}

    def connection_counts(self) -> dict[tuple[VipKey, Backend], int]:
        with self._lock:
            return dict(self._counts)

    def drain_outcomes(self) -> list[tuple[Backend, bool]]:
        """Outcomes of TCP attempts whose reply window has passed (for ``health``), read from
        conntrack in one round trip."""
        now, due = self._clock(), []
        with self._lock:
            while self._pending and self._pending[0][0] <= now:
                _, flow, backend = self._pending.popleft()
                self._checking[backend] -= 1
                due.append((flow, backend))
        if not due:
            return []
        try:
            states = self.netfilter.flow_states([flow for flow, _ in due])
        except NetfilterError as exc:
            log.warning("reading %d flows for health failed: %s", len(due), exc)
            return []
        # Gone within the reply window: conntrack kills an entry whose only reply was a
        # reset (refused); answered flows linger (TIME_WAIT, CLOSE) for longer than this.
        return [(backend, state is not None and state.answered) for (_, backend), state in zip(due, states, strict=True)]

    async def start(self) -> None:
        """Bind the queues, one reader thread each (idempotent)."""
        if self._readers:
            return
        self._readers = [_QueueReader(number, self.handle_batch, cpu=i if self.pin else None)
                         for i, number in enumerate(self.queue_numbers)]
        log.info("NFQUEUE %s bound (%s); %d VIPs", ",".join(map(str, self.queue_numbers)),
                 "a reader pinned to each CPU" if self.pin else "a reader thread each", len(self._table))

    def close(self, keep_kernel_state: bool = True) -> None:
        for reader in self._readers:
            reader.stop()
        self._readers = []
        if not keep_kernel_state:
            self.netfilter.remove_base()
            self._table = {}
            self.state_path.unlink(missing_ok=True)
        self.netfilter.close()

    # -- packets -------------------------------------------------------------------------
    def handle(self, payload: bytes, indev: int = 0) -> Backend | None:
        """Balance the flow this first packet starts; the backend, or None (it will be rejected)."""
        return self.handle_batch([(payload, indev)])[0]

    def handle_batch(self, packets: list[tuple[bytes, int]]) -> list[Backend | None]:
        """Balance the flows these first packets (IPv4 bytes, input interface) start, with one
        conntrack round trip for all; the backend of each, or None (not a VIP with backends: the
        packet will be rejected). Thread-safe (the queue readers call it)."""
        with self._lock:
            return self._balance(packets)

    def _balance(self, packets: list[tuple[bytes, int]]) -> list[Backend | None]:
        # Only the header bytes are read, with plain indexing: per packet, anything more
        # (scapy, struct, string formatting) costs more than all the rest.
        chosen: list[Backend | None] = [None] * len(packets)
        requests: list[FlowNat] = []
        where: list[tuple[int, VipKey]] = []
        vips, p2c_ready = self._vips, False
        for i, (payload, indev) in enumerate(packets):
            ihl = (payload[0] & 0x0F) << 2 if payload else 0
            if len(payload) < 20 or len(payload) < ihl + 4:
                continue
            entry = vips.get((payload[16:20], payload[9], payload[ihl + 2:ihl + 4]))
            if entry is None or not entry.backends:
                continue
            key = entry.key
            flow = Flow(key.protocol, socket.inet_ntoa(payload[12:16]), payload[ihl] << 8 | payload[ihl + 1],
                        key.address, key.port)
            if entry.lookup:
                # The Maglev slot of the 5-tuple as the packet carries it (addresses, ports).
                slot = zlib.crc32(payload[12:20] + payload[ihl:ihl + 4]) % len(entry.lookup)
                backend = entry.backends[entry.lookup[slot]]
            else:
                if not p2c_ready:
                    self._count_closed_flows()
                    p2c_ready = True
                backend = self._p2c(entry, flow)
            snat = None if flow.src != flow.dst and not indev else self._snat(flow, backend, indev)
            requests.append(FlowNat(flow, backend, snat))
            where.append((i, key))
            chosen[i] = backend
        if not requests:
            return chosen
        codes = self.netfilter.create_flows(requests)
        lingering = [n for n, code in enumerate(codes) if code == EEXIST and requests[n].flow.protocol == "tcp"]
        if lingering:
            for n, code in zip(lingering, self._replace_lingering([requests[n] for n in lingering]), strict=True):
                codes[n] = code
        udp: list[Flow] = []
        deadline = self._clock() + self.reply_timeout
        for (i, key), request, code in zip(where, requests, codes, strict=True):
            flow, backend, _ = request
            if code and code != EEXIST:
                log.warning("conntrack entry %s → %s:%d refused: errno %d", flow, backend.ip, backend.port, code)
                chosen[i] = None
                continue
            if flow.protocol == "udp":
                udp.append(flow)
            if code:        # a retransmission, or datagrams of a flow already balanced: not new
                continue
            self._counts[key, backend] += 1
            if (flow.protocol == "tcp" and self._checking[backend] < CHECKS_PER_BACKEND
                    and len(self._pending) < MAX_PENDING_CHECKS):
                self._pending.append((deadline, flow, backend))
                self._checking[backend] += 1
        if udp:
            try:
                self.netfilter.remember_udp_flows(udp)
            except NetfilterError as exc:
                log.warning("%s", exc)
        return chosen

    def _replace_lingering(self, requests: list[FlowNat]) -> list[int]:
        """SYNs for 5-tuples whose old entries linger (TIME_WAIT, CLOSE: a client reusing its port):
        conntrack would drop such an entry and start an un-NATed one, so replace them now (two
        round trips for all of them). A retransmitted SYN keeps its own entry (EEXIST)."""
        codes = [EEXIST] * len(requests)
        try:
            states = self.netfilter.flow_states([request.flow for request in requests])
            stale = [n for n, state in enumerate(states) if state is None or not state.opening]
            if stale:
                for n, code in zip(stale, self.netfilter.replace_flows([requests[n] for n in stale]), strict=True):
                    codes[n] = code
        except NetfilterError as exc:
            log.warning("replacing %d lingering conntrack entries failed: %s", len(requests), exc)
        return codes

    def _count_closed_flows(self) -> None:
        for done in self.netfilter.closed_flows():
            backend = self._flows_to.pop(done, None)
            if backend is not None:
                self._open.closed(backend)

    def _p2c(self, entry: VipEntry, flow: Flow) -> Backend:
        """No Maglev table: power of two choices over flows still open."""
        chosen = p2c_choose(entry.backends, self._open, self._rng) or entry.backends[0]
        self._open.opened(chosen)
        self._flows_to[flow] = chosen
        return chosen

    def _snat(self, flow: Flow, backend: Backend, indev: int) -> str | None:
        """Source NAT where replies would otherwise bypass this node: a local client that got the
        VIP itself as source, or a forwarded client on the backend's own link (hairpin)."""
        route = self._route(backend.ip)
        if route is None or not route.src:
            return None
        if flow.src == flow.dst or route.oif == indev:
            return route.src
        return None

    def _route(self, ip: str) -> RouteInfo | None:
        now = self._clock()
        cached = self._routes.get(ip)
        if cached is None or cached[0] < now:
            cached = (now + ROUTE_CACHE_SECONDS, self.netfilter.route_to(ip))
            self._routes[ip] = cached
        return cached[1]

    # -- state kept across restarts --------------------------------------------------------
    def _save_state(self) -> None:
        entries = [{"address": k.address, "port": k.port, "protocol": k.protocol,
                    "backends": [[b.ip, b.port] for b in e.backends],
                    "draining": [[b.ip, b.port] for b in e.draining], "table_size": len(e.lookup)}
                   for k, e in sorted(self._table.items())]
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"version": 1, "vips": entries}))
        tmp.replace(self.state_path)

    def _load_state(self) -> dict[VipKey, VipEntry]:
        try:
            data = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable state %s: %s", self.state_path, exc)
            return {}
        table = {}
        for item in data.get("vips", []):
            key = VipKey(item["address"], item["port"], item["protocol"])
            backends = tuple(Backend(ip, port) for ip, port in item["backends"])
            lookup = maglev_table(backends, item["table_size"]) if item["table_size"] else ()
            table[key] = VipEntry(key, backends, lookup, tuple(Backend(ip, p) for ip, p in item["draining"]))
        return table


NF_ACCEPT = 1
_VERDICT_BATCH = 3 << 8 | 3     # NFNL_SUBSYS_QUEUE, NFQNL_MSG_VERDICT_BATCH
_NFQA_VERDICT_HDR = 2


class _QueueReader:
    """One NFQUEUE, read on a thread of its own: wait for the socket, drain every packet queued
    (netfilterqueue parses them), balance them in one ``handle_batch``, accept them all with one
    batch verdict. The verdict is where the kernel carries the packet on (forwarding, the
    handshake with the backend): sent from Python's socket it runs without the GIL, so the
    readers of other queues and the agent's loop go on meanwhile. Each packet is accepted even
    when balancing failed: an un-NATed VIP flow is then rejected by the filter rule, never hung."""

    def __init__(self, number: int, balance: Callable[[list[tuple[bytes, int]]], object],
                 cpu: int | None = None) -> None:
        from netfilterqueue import NetfilterQueue

        self.number = number
        self._balance = balance
        self._cpu = cpu
        self._queued: list[tuple[bytes, int]] = []
        self._last_id = -1
        self._nfq = NetfilterQueue()
        self._nfq.bind(number, self._on_packet, max_len=QUEUE_MAXLEN, range=COPY_BYTES)
        fd = self._nfq.get_fd()
        self._fd = fd
        # The same socket (a dup of its fd), for the batch verdicts netfilterqueue has no call for.
        self._verdicts = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER, fileno=os.dup(fd))
        self._verdict = (struct.pack("=IHHII", 32, _VERDICT_BATCH, NLM_F_REQUEST, 0, 0)
                         + struct.pack("!BBH", socket.AF_UNSPEC, 0, number)
                         + struct.pack("=HH", 12, _NFQA_VERDICT_HDR) + struct.pack("!I", NF_ACCEPT))
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name=f"nfqueue-{number}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        if self._cpu is not None:
            try:
                os.sched_setaffinity(0, {self._cpu})     # this thread only
            except OSError as exc:
                log.warning("NFQUEUE %d: cannot pin to CPU %d: %s", self.number, self._cpu, exc)
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while True:
            ready = poller.poll()
            if any(fd == self._wake_r for fd, _ in ready):
                return
            try:
                self._nfq.run(False)      # every packet queued now, then EAGAIN
            except OSError as exc:
                log.warning("reading NFQUEUE %d: %s", self.number, exc)
            self._flush()

    def _on_packet(self, packet) -> None:
        self._queued.append((packet.get_payload(), packet.indev))
        self._last_id = packet.id
        if len(self._queued) >= BATCH:
            self._flush()

    def _flush(self) -> None:
        if not self._queued:
            return
        queued, self._queued = self._queued, []
        try:
            self._balance(queued)
        except Exception:   # a bug must not lose the verdicts
            log.exception("NFQUEUE %d: balancing %d packets failed", self.number, len(queued))
        try:
            # Accepts every packet of this queue up to the last one read.
            self._verdicts.send(self._verdict + struct.pack("!I", self._last_id))
        except OSError as exc:
            log.error("NFQUEUE %d: verdict failed: %s", self.number, exc)

    def stop(self) -> None:
        os.write(self._wake_w, b"x")
        self._thread.join(timeout=5)
        self._nfq.unbind()
        self._verdicts.close()
        os.close(self._wake_r)
        os.close(self._wake_w)


# -- a standalone node balancer (ops and kernel tests) -------------------------------------
def main(argv: list[str] | None = None) -> int:
    """Serve the VIPs of a cluster-view JSON file from this namespace, re-reading it when it changes."""
    parser = argparse.ArgumentParser(prog="python -m minuteman.nfqueue", description=main.__doc__)
    parser.add_argument("--view", required=True, type=Path, help="ClusterView JSON file")
    parser.add_argument("--node-ip", help="this node's address (source of locally originated VIP flows)")
    parser.add_argument("--queue", type=int, default=DEFAULT_QUEUE, help="first queue number")
    parser.add_argument("--queues", type=int, help=f"how many queues (default: one per CPU, at most {MAX_QUEUES})")
    parser.add_argument("--pin", action="store_true", help="each CPU's packets to its own queue, reader pinned to it")
    parser.add_argument("--state-file", type=Path)
    parser.add_argument("--balancing", choices=["maglev", "p2c"], default="maglev")
    parser.add_argument("--api", help="serve /v1/vips on host:port")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    from control.view import ClusterView
    from minuteman.reconciler import LoadBalancer

    async def serve() -> None:
        dataplane = NfqueueDataplane(node_ip=args.node_ip, queue=args.queue, queues=args.queues, pin=args.pin,
                                     state_path=args.state_file)
        lb = LoadBalancer(dataplane, balancing=args.balancing, registry=None)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        mtime = 0.0
        runner = asyncio.create_task(lb.run(repair_interval=2.0))
        server = None
        if args.api:
            import uvicorn
            from starlette.applications import Starlette

            host, port = args.api.rsplit(":", 1)
            server = uvicorn.Server(uvicorn.Config(Starlette(routes=lb.http_routes()), host=host,
                                                   port=int(port), log_level="warning"))
            asyncio.create_task(server.serve())
        while not stop.is_set():
            stat = args.view.stat()
            if stat.st_mtime != mtime:
                mtime = stat.st_mtime
                lb.on_view(ClusterView.model_validate_json(args.view.read_text()))
                print(f"ready version={lb.status.view_version} vips={len(lb.vips_json())}", flush=True)
            try:
                await asyncio.wait_for(stop.wait(), 0.2)
            except TimeoutError:
                pass
        runner.cancel()
        if server is not None:
            server.should_exit = True
        lb.close(keep_kernel_state=True)

    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
