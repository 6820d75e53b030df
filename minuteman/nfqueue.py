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
Packets come in through the queue's fd on the asyncio loop (``start``); the loop never blocks on
them. Feeds ``health`` through ``drain_outcomes`` (each SYN's conntrack entry is checked
``reply_timeout`` later: answered, refused (entry gone or reset) or unanswered).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import os
import random
import signal
import socket
import struct
import sys
import time
from collections import Counter, deque
from pathlib import Path

from minuteman.dataplane import ApplyResult, Backend, VipEntry, VipKey
from minuteman.maglev import flow_hash, maglev_table, pick
from minuteman.netfilter import Flow, KernelNetfilter, Netfilter, NetfilterError, RouteInfo
from minuteman.p2c import OpenConnections, p2c_choose

log = logging.getLogger("navstar.minuteman.nfqueue")

DEFAULT_QUEUE = 50
PROTOCOLS = {socket.IPPROTO_TCP: "tcp", socket.IPPROTO_UDP: "udp"}
MAX_PENDING_CHECKS = 4096     # SYNs awaiting their health check; beyond this they go unchecked
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

    def __init__(self, *, node_ip: str | None = None, queue: int = DEFAULT_QUEUE,
                 netfilter: Netfilter | None = None, state_path: Path | None = None,
                 reply_timeout: float = 0.4, clock=time.monotonic, rng: random.Random | None = None) -> None:
        self.queue = queue
        self.netfilter = netfilter if netfilter is not None else KernelNetfilter(node_ip)
        self.state_path = state_path or default_state_path()
        self.reply_timeout = reply_timeout
        self._clock = clock
        self._rng = rng or random.Random()
        self._table: dict[VipKey, VipEntry] = self._load_state()
        self._counts: Counter[tuple[VipKey, Backend]] = Counter()
        self._open = OpenConnections()
        self._flows_to: dict[Flow, Backend] = {}        # P2C flows, to count their end
        self._pending: deque[tuple[float, Flow, Backend]] = deque()
        self._routes: dict[str, tuple[float, RouteInfo | None]] = {}
        self._nfq = None
        self._fd: int | None = None

    # -- the seam ------------------------------------------------------------------------
    def apply(self, table: dict[VipKey, VipEntry]) -> ApplyResult:
        result = ApplyResult()
        try:
            self.netfilter.ensure_base(self.queue)
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
        self._table = {key: table[key] for key in result.programmed}
        self._save_state()
        return result

    def current(self) -> dict[VipKey, VipEntry]:
        """VIPs in the ipset, with the backends this agent (or its predecessor) gave them."""
        return {key: self._table.get(key, VipEntry(key, ())) for key in self.netfilter.vip_members()}

    def connection_counts(self) -> dict[tuple[VipKey, Backend], int]:
        return dict(self._counts)

    def drain_outcomes(self) -> list[tuple[Backend, bool]]:
        """Outcomes of TCP attempts whose reply window has passed (for ``health``)."""
        now, outcomes = self._clock(), []
        while self._pending and self._pending[0][0] <= now:
            _, flow, backend = self._pending.popleft()
            try:
                state = self.netfilter.flow_state(flow)
            except NetfilterError:
                continue
            # Gone within the reply window: conntrack kills an entry whose only reply was a
            # reset (refused); answered flows linger (TIME_WAIT, CLOSE) for longer than this.
            outcomes.append((backend, state is not None and state.answered))
        return outcomes

    async def start(self) -> None:
        """Bind the queue and take its packets on the running loop (idempotent)."""
        if self._nfq is not None:
            return
        from netfilterqueue import NetfilterQueue

        nfq = NetfilterQueue()
        nfq.bind(self.queue, self._on_packet, max_len=8192)
        self._nfq, self._fd = nfq, nfq.get_fd()
        asyncio.get_running_loop().add_reader(self._fd, nfq.run, False)
        log.info("NFQUEUE %d bound; %d VIPs", self.queue, len(self._table))

    def close(self, keep_kernel_state: bool = True) -> None:
        if self._nfq is not None:
            try:
                asyncio.get_running_loop().remove_reader(self._fd)
            except RuntimeError:
                pass
            self._nfq.unbind()
            self._nfq = None
        if not keep_kernel_state:
            self.netfilter.remove_base()
            self._table = {}
            self.state_path.unlink(missing_ok=True)
        self.netfilter.close()

    # -- packets -------------------------------------------------------------------------
    def _on_packet(self, packet) -> None:
        try:
            self.handle(packet.get_payload(), packet.indev)
        except Exception:   # never lose the verdict: an un-NATed flow is rejected, not hung
            log.exception("NFQUEUE packet handling failed")
        packet.accept()

    def handle(self, payload: bytes, indev: int = 0) -> Backend | None:
        """Balance the flow this first packet starts; the backend, or None (it will be rejected).
        The 5-tuple is read with struct: per-packet parsing with scapy would cost more than the rest."""
        if len(payload) < 20:
            return None
        ihl = (payload[0] & 0x0F) * 4
        protocol = PROTOCOLS.get(payload[9])
        if protocol is None or len(payload) < ihl + 4:
            return None
        sport, dport = struct.unpack_from("!HH", payload, ihl)
        flow = Flow(protocol, socket.inet_ntoa(payload[12:16]), sport, socket.inet_ntoa(payload[16:20]), dport)
        key = VipKey(flow.dst, dport, protocol)
        entry = self._table.get(key)
        if entry is None or not entry.backends:
            return None
        backend = self._choose(entry, flow)
        snat = self._snat(flow, backend, indev)
        created = self.netfilter.create_flow(flow, backend, snat)
        if not created and protocol == "tcp":
            # A SYN for a 5-tuple whose old entry lingers (TIME_WAIT, CLOSE): conntrack would drop
            # that entry and start an un-NATed one, so replace it now. A retransmitted SYN keeps its own.
            state = self.netfilter.flow_state(flow)
            if state is None or not state.opening:
                self.netfilter.delete_flow(flow)
                created = self.netfilter.create_flow(flow, backend, snat)
        if protocol == "udp":
            self.netfilter.remember_udp_flow(flow)
        if created:
            self._counts[key, backend] += 1
            if protocol == "tcp" and len(self._pending) < MAX_PENDING_CHECKS:
                self._pending.append((self._clock() + self.reply_timeout, flow, backend))
        return backend

    def _choose(self, entry: VipEntry, flow: Flow) -> Backend:
        if entry.lookup:
            chosen = pick(entry.backends, entry.lookup,
                          flow_hash(6 if flow.protocol == "tcp" else 17, flow.src, flow.sport, flow.dst, flow.dport))
            if chosen is not None:
                return chosen
        # No Maglev table: power of two choices over flows still open.
        for done in self.netfilter.closed_flows():
            backend = self._flows_to.pop(done, None)
            if backend is not None:
                self._open.closed(backend)
        chosen = p2c_choose(entry.backends, self._open, self._rng) or entry.backends[0]
        self._open.opened(chosen)
        self._flows_to[flow] = chosen
        return chosen

    def _snat(self, flow: Flow, backend: Backend, indev: int) -> str | None:
        """Source NAT where replies would otherwise bypass this node: a local client that got the
        VIP itself as source, or a forwarded client on the backend's own link (hairpin)."""
        if flow.src != flow.dst and not indev:
            return None
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


# -- a standalone node balancer (ops and kernel tests) -------------------------------------
def main(argv: list[str] | None = None) -> int:
    """Serve the VIPs of a cluster-view JSON file from this namespace, re-reading it when it changes."""
    parser = argparse.ArgumentParser(prog="python -m minuteman.nfqueue", description=main.__doc__)
    parser.add_argument("--view", required=True, type=Path, help="ClusterView JSON file")
    parser.add_argument("--node-ip", help="this node's address (source of locally originated VIP flows)")
    parser.add_argument("--queue", type=int, default=DEFAULT_QUEUE)
    parser.add_argument("--state-file", type=Path)
    parser.add_argument("--balancing", choices=["maglev", "p2c"], default="maglev")
    parser.add_argument("--api", help="serve /v1/vips on host:port")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    from control.view import ClusterView
    from minuteman.reconciler import LoadBalancer

    async def serve() -> None:
        dataplane = NfqueueDataplane(node_ip=args.node_ip, queue=args.queue, state_path=args.state_file)
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
