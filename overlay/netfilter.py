"""The overlay's NAT seam: masquerade overlay → elsewhere, and BRIDGE port mappings (DNAT).

``OverlayNetfilter`` is the typed interface; ``overlay.netfilter_kernel.NftablesNetfilter`` the
real one (an nftables table of its own, ``ip navstar-overlay``); ``overlay.netfilter_fake.
FakeNetfilter`` keeps the rules in memory and records every call.

Traffic that leaves through the VTEP (``vtep1024``) keeps the container's address (peers route it
back over the overlay); everything else leaving the overlay subnet is masqueraded. A port
mapping DNATs ``<agent ip>:<host port>`` to ``<container ip>:<container port>``, for packets
from other hosts and from the agent itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol


class NetfilterError(Exception):
    """The kernel refused a change or a read; the message says what and why."""


@dataclass(frozen=True, order=True)
class PortMapping:
    host_port: int
    container_ip: str
    container_port: int
    protocol: Literal["tcp", "udp"] = "tcp"


@dataclass(frozen=True)
class NatRules:
    agent_ip: str
    overlay_subnet: str
    vtep: str
    port_mappings: frozenset[PortMapping] = field(default_factory=frozenset)


class OverlayNetfilter(Protocol):
    def current(self) -> NatRules | None:
        """The rules in place; None when they are missing, partial, or not ones we wrote. With no
        port mappings the agent address is not in the rules: ``agent_ip`` is then "". Read only.
        Raises NetfilterError when they cannot be read."""

    def apply(self, rules: NatRules) -> None:
        """Replace our rules with ``rules`` atomically (what earlier versions left goes too).
        Idempotent. Raises NetfilterError, and then nothing changed."""

    def remove(self) -> None:
        """Remove our rules; nothing there is fine. Raises NetfilterError."""
