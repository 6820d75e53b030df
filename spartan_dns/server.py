"""The DNS server: UDP and TCP listeners around the handler chain.

Hot path (UDP): a query whose bytes after the ID equal a query answered before (same flags, name
in the same case, same EDNS0 options) is answered from the stored reply with only the ID patched —
no parsing, no packing, no task. That "replay table" holds own-zone answers until the zones change
and cached forwarded answers until their TTLs next tick down. Everything else goes through
:meth:`QueryServer.process`: client filter → decode (FORMERR/NOTIMP) → chain → encode (EDNS0, TC).

The UDP socket is read with ``loop.add_reader`` and drained in bursts: one event-loop wake-up per
burst instead of per datagram (asyncio's datagram transport reads one datagram per wake-up).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import socket
import struct
import time
from bisect import bisect_left
from collections.abc import Awaitable, Iterable

from spartan_dns.handlers import Chain
from spartan_dns.message import (
    SERVFAIL,
    Malformed,
    Reply,
    Request,
    decode_query,
    encode_reply,
    header_reply,
    rcode_name,
    ttl_offsets,
    type_label,
)
from spartan_dns.offload import Countdown, ReplayOffload
from spartan_dns.stats import LATENCY_BUCKETS, DnsStats, Latency

log = logging.getLogger("navstar.dns.server")

UDP_BURST = 64              # datagrams handled per wake-up before yielding to the loop
UDP_RECV_SIZE = 4096        # queries are small; anything longer is cut and then fails to parse
UDP_RCVBUF = 4 << 20
MAX_ROTATIONS = 8           # distinct orders stored for a multi-record answer
OFFLOAD_STATS = 256         # stats keys the offload can count (bpf/lib/dns_replay.h DNS_REPLAY_STATS)


class ClientFilter:
    """Which sources get answers: the node's own addresses, loopback and task networks.

    Decisions are remembered per address (bounded), so the hot path is one dict lookup."""

    def __init__(self, networks: Iterable[str], memory: int = 65_536):
        self.networks = [ipaddress.ip_network(n, strict=False) for n in networks]
        self.memory = memory
        self.allowed: dict[str, bool] = {}      # addresses seen and allowed (hot path reads this)
        self._refused: set[str] = set()

    def allows(self, address: str) -> bool:
        if address in self.allowed:
            return True
        if address in self._refused:
            return False
        try:
            ip = ipaddress.ip_address(address.split("%")[0])
        except ValueError:
            return False
        if getattr(ip, "ipv4_mapped", None):
            ip = ip.ipv4_mapped
        ok = any(ip in net for net in self.networks)
        remembered = self.allowed if ok else self._refused
        if len(remembered) >= self.memory:
            remembered.clear()
        if ok:
            self.allowed[address] = True
        else:
            self._refused.add(address)
        return ok


class ReplayEntry:
    __slots__ = ("tails", "turn", "until", "key", "latency", "next_tick", "_counted_down")

    def __init__(self, tails: list[bytes], until: float, key: tuple, latency: Latency):
        self.tails = tails          # reply bytes after the ID, one per answer rotation
        self.turn = 0
        self.until = until          # monotonic deadline
        self.key = key              # stats key (zone, type, rcode, source)
        self.latency = latency
        self.next_tick = math.inf   # when the TTLs in ``tails`` are a second too high
        self._counted_down: list[tuple[bytes, Countdown]] | None = None    # tails as first encoded

    def count_down(self, origin: float, age: int) -> None:
        """The tails' TTLs, ``age`` seconds counted down already, count down a second at a time from
        ``origin`` (a cache entry's), as the cache would encode them again: ``tick`` rewrites them."""
        self._counted_down = [(tail, Countdown(tuple((offset, ttl + age) for offset, ttl in ttl_offsets(b"\0\0" + tail)),
                                               origin, self.until)) for tail in self.tails]
        self.next_tick = origin + age + 1

    def countdown(self) -> Countdown | None:
        """The first tail's TTLs (the one an offload may carry), if they count down."""
        return self._counted_down[0][1] if self._counted_down else None

    def tick(self, now: float) -> None:
        if not self._counted_down:
            return
        self.tails = [countdown.patched(b"\0\0" + tail, now)[2:] for tail, countdown in self._counted_down]
        origin = self._counted_down[0][1].origin
        self.next_tick = origin + int(now - origin) + 1


class QueryServer:
    """Turns query bytes into reply bytes (or an awaitable of them, or None to stay silent)."""

    def __init__(self, chain: Chain, stats: DnsStats, clients: ClientFilter, replay_limit: int = 50_000):
        self.chain = chain
        self.stats = stats
        self.clients = clients
        self.replay: dict[bytes, ReplayEntry] = {}
        self.replay_limit = replay_limit
        # Own-zone answers copied to a replay table in the kernel (spartan_dns.offload), if any;
        # its hits are counted per stats key, which it knows by a small id.
        self.offload: ReplayOffload | None = None
        self._stat_ids: dict[tuple, int] = {}
        self._stat_keys: list[tuple] = []
        self._offload_counted: dict[int, int] = {}

    def forget(self) -> None:
        """Drops every stored reply: call after the zones changed."""
        self.replay = {}
        if self.offload is not None:
            try:
                self.offload.forget()
            except OSError as exc:
                self.drop_offload(f"it could not forget: {exc}")

    def count_offloaded(self) -> None:
        """Adds the answers the offload gave since the last call to the request counters
        (source ``kernel``; they are counted, not timed)."""
        if self.offload is None:
            return
        for stat, total in self.offload.hits(len(self._stat_keys)).items():
            new = total - self._offload_counted.get(stat, 0)
            if new <= 0:
                continue
            self._offload_counted[stat] = total
            zone, qtype, rcode, _source = self._stat_keys[stat]
            key = (zone, qtype, rcode, "kernel")
            self.stats.requests[key] = self.stats.requests.get(key, 0) + new
            self.stats.kernel_answers += new

    def _offload(self, query_tail: bytes, reply_tail: bytes, key: tuple, countdown: Countdown | None) -> None:
        stat = self._stat_ids.get(key)
        if stat is None:
            if len(self._stat_keys) >= OFFLOAD_STATS:
                return
            stat = self._stat_ids[key] = len(self._stat_keys)
            self._stat_keys.append(key)
        assert self.offload is not None
        try:
            self.offload.put(query_tail, reply_tail, stat, countdown)
        except OSError as exc:
            self.drop_offload(f"it refused an answer: {exc}")

    def drop_offload(self, why: str) -> None:
        """Stops using the offload (closed, so nothing it holds answers any more); this process
        answers every query from here on."""
        offload, self.offload = self.offload, None
        if offload is None:
            return
        log.error("DNS kernel replay table dropped (%s): the resolver answers every query itself", why)
        try:
            offload.close()
        except Exception:  # noqa: BLE001 - it is being dropped; a failing close must not stop answers
            log.exception("closing the DNS kernel replay table failed")

    def process(self, data: bytes, client: tuple, tcp: bool,
                started: float) -> bytes | Awaitable[bytes | None] | None:
        if not self.clients.allows(client[0]):
            self.stats.drop("client")
            return None
        try:
            request = decode_query(data, client, tcp)
        except Malformed as exc:
            if exc.reply is None:
                self.stats.drop(exc.reason)
            else:
                self._count((".", "other", rcode_name(struct.unpack_from("!H", exc.reply, 2)[0] & 0xF), "error"),
                            started)
            return exc.reply
        try:
            result = self.chain.resolve(request)
        except Exception:  # noqa: BLE001 - a handler bug must cost one SERVFAIL, not the server
            log.exception("handler failed on %s/%s", request.qname, request.qtype)
            result = Reply(SERVFAIL, source="error")
        if isinstance(result, Reply):
            return self.finish(request, result, started)
        return self._finish_later(request, result, started)

    async def _finish_later(self, request: Request, pending: Awaitable[Reply], started: float) -> bytes:
        try:
            reply = await pending
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001
            log.exception("forwarding failed on %s/%s", request.qname, request.qtype)
            reply = Reply(SERVFAIL, source="error")
        return self.finish(request, reply, started)

    def finish(self, request: Request, reply: Reply, started: float) -> bytes:
        try:
            wire = encode_reply(request, reply)
        except Exception:  # noqa: BLE001 - e.g. an upstream record dnslib cannot pack again
            log.warning("cannot encode the answer for %s/%s", request.qname, request.qtype, exc_info=True)
            reply = Reply(SERVFAIL, source="error", zone=reply.zone)
            wire = header_reply(request.raw, SERVFAIL)
        key = (reply.zone, type_label(request.qtype), rcode_name(reply.rcode), reply.source)
        if reply.replay_until > started and not request.tcp:
            self._remember(request, reply, wire, key)
        self._count(key, started)
        return wire

    def _remember(self, request: Request, reply: Reply, wire: bytes, key: tuple) -> None:
        tails = [wire[2:]]
        count = min(len(reply.answers), MAX_ROTATIONS) if reply.rotate else 1
        truncated = wire[2] & 0x02
        if count > 1 and not truncated:
            tails += [encode_reply(request, reply, rotation)[2:] for rotation in range(1, count)]
        if len(self.replay) >= self.replay_limit:
            self.replay = {}
        entry = ReplayEntry(tails, reply.replay_until, key, self.stats.latency[key[3]])
        if reply.ttl_origin is not None and not truncated:
            entry.count_down(reply.ttl_origin, reply.ttl_age)
        self.replay[request.raw[2:]] = entry
        if self.offload is not None and len(tails) == 1:
            countdown = entry.countdown()
            if reply.replay_until == math.inf or countdown is not None:
                self._offload(request.raw[2:], tails[0], key, countdown)

    def _count(self, key: tuple, started: float) -> None:
        self.stats.answered(key, time.monotonic() - started)


class UdpListener:
    def __init__(self, server: QueryServer, host: str, port: int):
        self.server = server
        self.host = host
        self.port = port
        self.sock: socket.socket | None = None
        self._tasks: set[asyncio.Task] = set()

    def open(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RCVBUF)
            sock.bind((self.host, self.port))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self.sock = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable)

    @property
    def address(self) -> tuple[str, int]:
        return self.sock.getsockname()[:2] if self.sock else (self.host, self.port)

    async def close(self) -> None:
        if self.sock is not None:
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _readable(self) -> None:
        sock = self.sock
        if sock is None:
            return
        server = self.server
        replay = server.replay
        allowed = server.clients.allowed
        requests = server.stats.requests
        monotonic = time.monotonic
        for _ in range(UDP_BURST):
            try:
                data, addr = sock.recvfrom(UDP_RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue
            started = monotonic()
            entry = replay.get(data[2:])
            if entry is not None and entry.until > started and addr[0] in allowed:
                if started >= entry.next_tick:
                    entry.tick(started)
                tails = entry.tails
                if len(tails) == 1:
                    tail = tails[0]
                else:
                    entry.turn += 1
                    tail = tails[entry.turn % len(tails)]
                with contextlib.suppress(OSError):
                    sock.sendto(data[:2] + tail, addr)
                requests[entry.key] += 1
                latency = entry.latency
                elapsed = monotonic() - started
                latency.counts[bisect_left(LATENCY_BUCKETS, elapsed)] += 1
                latency.total += elapsed
                continue
            try:
                result = server.process(data, addr, False, started)
            except Exception:  # noqa: BLE001 - never let one datagram stop the listener
                log.exception("unexpected error on a datagram from %s", addr)
                continue
            if result is None:
                continue
            if isinstance(result, bytes):
                with contextlib.suppress(OSError):
                    sock.sendto(result, addr)
            else:
                task = asyncio.ensure_future(self._send_later(result, addr))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            replay = server.replay          # process() may have replaced a full table

    async def _send_later(self, pending: Awaitable[bytes | None], addr) -> None:
        wire = await pending
        if wire is not None and self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.sendto(wire, addr)


class TcpListener:
    """DNS over TCP (RFC 7766): several queries per connection, answered as they complete."""

    def __init__(self, server: QueryServer, host: str, port: int, idle_timeout: float = 10.0,
                 max_connections: int = 256, max_pending_per_connection: int = 16):
        self.server = server
        self.host = host
        self.port = port
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.max_pending = max_pending_per_connection
        self._server: asyncio.base_events.Server | None = None
        self._connections: set[asyncio.Task] = set()

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port, reuse_address=True,
                                                  backlog=128)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        task = asyncio.current_task()
        if len(self._connections) >= self.max_connections or not self.server.clients.allows(peer[0]):
            self.server.stats.drop("tcp_refused")
            writer.close()
            return
        self._connections.add(task)
        pending: set[asyncio.Task] = set()
        try:
            while True:
                try:
                    prefix = await asyncio.wait_for(reader.readexactly(2), self.idle_timeout)
                    (length,) = struct.unpack("!H", prefix)
                    data = await asyncio.wait_for(reader.readexactly(length), self.idle_timeout)
                except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                    break
                result = self.server.process(data, peer, True, time.monotonic())
                if isinstance(result, bytes):
                    writer.write(struct.pack("!H", len(result)) + result)
                elif result is not None:
                    answer = asyncio.ensure_future(result)
                    pending.add(answer)
                    answer.add_done_callback(lambda done, w=writer: self._write(w, done, pending))
                    if len(pending) >= self.max_pending:
                        await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            for answer in pending:
                answer.cancel()
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    @staticmethod
    def _write(writer: asyncio.StreamWriter, done: asyncio.Future, pending: set) -> None:
        pending.discard(done)
        if done.cancelled() or done.exception() is not None or writer.is_closing():
            return
        wire = done.result()
        if wire is not None:
            writer.write(struct.pack("!H", len(wire)) + wire)

