"""The netfilter seam of the NFQUEUE dataplane: the VIP set, the rules, the NAT map, VIP routes,
conntrack reads.

``Netfilter`` is the protocol; ``minuteman.netfilter_kernel.KernelNetfilter`` the real one (one
nftables table, local routes, conntrack over netlink); ``minuteman.netfilter_fake.FakeNetfilter``
keeps it in memory and records every call, for tests.

What the real one keeps in the node's network namespace is described in ``netfilter_kernel``;
what both agree on is here: the mark a queue worker's verdict puts on the first packet of a
flow. ``MARK_TAG`` in the top byte, ``MARK_SNAT`` for source NAT, the backend id (its key in the
NAT map) in the low 23 bits. It lives on that one packet between the mangle hook and the end of
POSTROUTING, where it is cleared.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from minuteman.dataplane import Backend, Protocol_, VipKey

ROUTE_PROTO = 211          # marks the VIP routes as ours (rtm_protocol)

MARK_TAG, MARK_TAG_MASK = 0x4E000000, 0xFF000000
MARK_SNAT = 0x00800000
MARK_ID_MASK = 0x007FFFFF   # backend ids 1 … MARK_ID_MASK

IPPROTO = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}
TCP_CONNTRACK_SYN_SENT, TCP_CONNTRACK_CLOSE = 1, 8


class NetfilterError(RuntimeError):
    """The kernel refused, or could not be read; the message says what and why."""


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
    """What the NFQUEUE dataplane asks of netfilter and routing. Reads never write; every write
    is idempotent (asking for what is there changes nothing). Failures raise NetfilterError
    unless the method says it returns them."""

    def ensure_base(self, queue: int, queues: int = 1, cpu_fanout: bool = False) -> None:
        """The VIP set, the NAT map, the chains and their rules in place, first packets to queues
        ``queue`` … ``queue + queues - 1`` (spread by flow, or with ``cpu_fanout`` by the CPU that
        handles the packet). Idempotent: no writes when all is in place; a repair keeps the set's
        members and the map's entries where they survive. Raises NetfilterError."""

    def remove_base(self) -> None:
        """Remove everything created here: rules, set, map, routes (and leftovers of earlier
        versions). Idempotent. Raises NetfilterError."""

    def base_intact(self, queue: int, queues: int = 1, cpu_fanout: bool = False) -> bool:
        """Whether what ``ensure_base`` makes is all there, exactly (read only: repair's drift
        check). Raises NetfilterError when it cannot be read."""

    def vip_members(self) -> set[VipKey]:
        """The VIPs in the set (none when there is no set). Raises NetfilterError."""

    def update_vips(self, add: Iterable[VipKey], remove: Iterable[VipKey]) -> dict[VipKey, str]:
        """Add and remove set members (adding one there, removing one gone: no error); returns
        errors by VIP instead of raising."""

    def set_routes(self, prefixes: set[str]) -> dict[str, str]:
        """Exactly these prefixes ("11.0.0.0/8", "1.2.3.4/32") have our local routes. Idempotent;
        returns errors by prefix instead of raising."""

    def local_routes(self) -> set[str]:
        """The prefixes that have our local routes."""

    def backend_ids(self) -> dict[int, Backend]:
        """The NAT map: backend id (as the mark carries it) → backend; empty when there is no map.
        Raises NetfilterError when the map exists but cannot be read."""

    def update_backend_ids(self, add: dict[int, Backend], remove: Iterable[int]) -> None:
        """Add and remove NAT map entries, in one transaction. Raises NetfilterError (and then
        changes nothing)."""

    def flow_states(self, flows: list[Flow]) -> list[FlowState | None]:
        """The conntrack entry of each flow (None: there is none), in one round trip. Raises
        NetfilterError."""

    def route_to(self, ip: str) -> RouteInfo | None:
        """How this node reaches ``ip`` (None: unreachable)."""

    def closed_flows(self) -> list[Flow]:
        """Flows whose conntrack entry ended since the last call (subscribes on the first call)."""

    def close(self) -> None:
        """Release sockets and threads. Kernel state stays."""
