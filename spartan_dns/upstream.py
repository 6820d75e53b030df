"""Forwarding to upstream resolvers: a race between the (at most two) healthiest upstreams.

Seam: :class:`UpstreamTransport` moves one query to one upstream and back. The real one
(:class:`SocketTransport`) uses asyncio UDP, retrying over TCP when the UDP answer is truncated;
tests use a fake. Above the seam, :class:`Forwarder` picks upstreams by their recent failures
(:class:`UpstreamHealth`, failures decay exponentially so a recovered upstream is used again), races
them — first usable answer wins — then tries the rest one by one while the overall timeout allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import random
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from dnslib import EDNS0, DNSLabel, DNSQuestion, DNSRecord

from spartan_dns.message import FLAG_QR, FLAG_TC, MAX_UDP_PAYLOAD, NOERROR, NXDOMAIN

log = logging.getLogger("navstar.dns.upstream")


@dataclass(frozen=True, order=True)
class Upstream:
    host: str
    port: int = 53

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> Upstream:
        """``1.2.3.4``, ``1.2.3.4:5353``, ``fd00::1``, ``[fd00::1]:5353``. Raises ValueError."""
        raw = text.strip()
        host, port = raw, "53"
        if raw.startswith("["):
            host, _, rest = raw[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else "53"
        elif raw.count(":") == 1:
            host, port = raw.split(":")
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"upstream {text!r}: expected an IP address with an optional :port") from None
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"upstream {text!r}: port must be 1-65535")
        return cls(str(address), int(port))


def resolv_conf_upstreams(path: str | Path = "/etc/resolv.conf", skip: Iterable[str] = ()) -> list[Upstream]:
    """The ``nameserver`` lines of resolv.conf, without our own addresses (we must not forward to us)."""
    skipped = {str(ipaddress.ip_address(s)) for s in skip}
    found: list[Upstream] = []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        log.warning("cannot read %s (%s): no default upstreams", path, exc)
        return []
    for line in lines:
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            try:
                upstream = Upstream.parse(fields[1].split("%")[0])
            except ValueError:
                log.warning("%s: ignoring nameserver %r", path, fields[1])
                continue
            if upstream.host not in skipped and upstream not in found:
                found.append(upstream)
    return found


class UpstreamTransport(Protocol):
    """Seam: one exchange with one upstream. Raises OSError/TimeoutError/asyncio errors on failure."""

    async def exchange(self, upstream: Upstream, query: bytes) -> bytes: ...


class _ReplyCatcher(asyncio.DatagramProtocol):
    """Resolves ``future`` with the first datagram carrying our query ID (others are ignored)."""

    def __init__(self, query_id: bytes, future: asyncio.Future):
        self.query_id = query_id
        self.future = future

    def datagram_received(self, data: bytes, addr) -> None:
        if data[:2] == self.query_id and len(data) >= 12 and not self.future.done():
            self.future.set_result(data)

    def error_received(self, exc: Exception) -> None:      # e.g. ICMP port unreachable
        if not self.future.done():
            self.future.set_exception(exc)


class SocketTransport:
    """The real transport: a connected UDP socket per exchange (random source port), TCP on TC."""

    async def exchange(self, upstream: Upstream, query: bytes) -> bytes:
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _ReplyCatcher(query[:2], future), remote_addr=(upstream.host, upstream.port))
        try:
            transport.sendto(query)
            answer = await future
        finally:
            transport.close()
        if struct.unpack_from("!H", answer, 2)[0] & FLAG_TC:
            return await self.exchange_tcp(upstream, query)
        return answer

    async def exchange_tcp(self, upstream: Upstream, query: bytes) -> bytes:
        reader, writer = await asyncio.open_connection(upstream.host, upstream.port)
        try:
            writer.write(struct.pack("!H", len(query)) + query)
            await writer.drain()
            while True:
                length = struct.unpack("!H", await reader.readexactly(2))[0]
                answer = await reader.readexactly(length)
                if answer[:2] == query[:2]:
                    return answer
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


class UpstreamHealth:
    """Recent failures per upstream, halving every ``halflife`` seconds."""

    def __init__(self, halflife: float = 30.0, clock: Callable[[], float] = time.monotonic):
        self.halflife = halflife
        self.clock = clock
        self._scores: dict[Upstream, tuple[float, float]] = {}   # upstream → (score, at)

    def score(self, upstream: Upstream) -> float:
        score, at = self._scores.get(upstream, (0.0, 0.0))
        if not score:
            return 0.0
        return score * math.pow(0.5, (self.clock() - at) / self.halflife)

    def failed(self, upstream: Upstream) -> None:
        self._scores[upstream] = (self.score(upstream) + 1.0, self.clock())

    def ranked(self, upstreams: Iterable[Upstream]) -> list[Upstream]:
        """Fewest recent failures first; ties in random order so load spreads."""
        shuffled = list(upstreams)
        random.shuffle(shuffled)
        return sorted(shuffled, key=lambda u: round(self.score(u), 2))


class UpstreamFailure(Exception):
    """No upstream gave a usable answer within the overall timeout."""


class Forwarder:
    """Sends questions upstream. Usable answers: NOERROR and NXDOMAIN with our question echoed."""

    def __init__(self, transport: UpstreamTransport, health: UpstreamHealth | None = None, *,
                 upstream_timeout: float = 1.0, overall_timeout: float = 2.5, race: int = 2,
                 on_failure: Callable[[Upstream, str], None] = lambda u, reason: None,
                 on_query: Callable[[Upstream], None] = lambda u: None):
        if upstream_timeout <= 0 or overall_timeout <= 0:
            raise ValueError("upstream and overall timeouts must be positive")
        self.transport = transport
        self.health = health or UpstreamHealth()
        self.upstream_timeout = upstream_timeout
        self.overall_timeout = overall_timeout
        self.race = race
        self.on_failure = on_failure
        self.on_query = on_query

    async def resolve(self, upstreams: list[Upstream], qname: DNSLabel | str, qtype: int, qclass: int) -> DNSRecord:
        """The first usable answer. Raises UpstreamFailure (never returns a made-up NXDOMAIN)."""
        if not upstreams:
            raise UpstreamFailure("no upstreams configured")
        qname = DNSLabel(tuple(label.lower() for label in DNSLabel(qname).label))
        ranked = self.health.ranked(upstreams)
        rounds = [ranked[: self.race]] + [[u] for u in ranked[self.race:]]
        try:
            async with asyncio.timeout(self.overall_timeout):
                for group in rounds:
                    answer = await self._race(group, qname, qtype, qclass)
                    if answer is not None:
                        return answer
        except TimeoutError:
            raise UpstreamFailure(f"no answer within {self.overall_timeout}s") from None
        raise UpstreamFailure("every upstream failed")

    async def _race(self, group: list[Upstream], qname: DNSLabel, qtype: int, qclass: int) -> DNSRecord | None:
        tasks = [asyncio.create_task(self._ask(u, qname, qtype, qclass)) for u in group]
        try:
            for next_done in asyncio.as_completed(tasks):
                answer = await next_done
                if answer is not None:
                    return answer
            return None
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _ask(self, upstream: Upstream, qname: DNSLabel, qtype: int, qclass: int) -> DNSRecord | None:
        query = DNSRecord(q=DNSQuestion(qname, qtype, qclass))
        query.add_ar(EDNS0(udp_len=MAX_UDP_PAYLOAD))
        self.on_query(upstream)
        reason = "error"
        try:
            async with asyncio.timeout(self.upstream_timeout):
                wire = await self.transport.exchange(upstream, query.pack())
            answer = DNSRecord.parse(wire)
            if not struct.unpack_from("!H", wire, 2)[0] & FLAG_QR or answer.header.id != query.header.id:
                reason = "mismatch"
            elif len(answer.questions) != 1 or answer.q.qtype != qtype or \
                    tuple(label.lower() for label in answer.q.qname.label) != qname.label:
                reason = "mismatch"
            elif answer.header.rcode not in (NOERROR, NXDOMAIN):
                reason = "rcode"
            else:
                return answer
        except TimeoutError:
            reason = "timeout"
        except asyncio.CancelledError:
            raise
        except OSError:
            reason = "network"
        except Exception:  # noqa: BLE001 - an unparsable answer is this upstream's failure, not ours
            reason = "malformed"
        self.health.failed(upstream)
        self.on_failure(upstream, reason)
        return None
