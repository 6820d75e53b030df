"""THE overlay seam: the kernel state the overlay owns, read and written through netlink.

``OverlayNetlink`` is the typed interface; ``overlay.netlink_kernel.PyRoute2Netlink`` is the real
one, ``overlay.netlink_fake.FakeNetlink`` the in-memory one (recording every call, with failure
injection) for tests.

Everything the overlay owns hangs off a few devices, so "ours" needs no bookkeeping and a
restarted agent adopts what it finds:

* links: the VXLAN device (``vtep1024``) and the bridges (``m-dcos``, ``d-dcos``);
* on the VXLAN device: permanent neighbours (peer VTEP IP → MAC), FDB entries with a remote
  (peer MAC → peer underlay IP), and non-kernel routes in the main table and table 42;
* policy rules that look up table 42;
* container veths: host ends enslaved to the bridges, the other end in the task namespace.

Bulk entries (thousands of peers) are written with ``apply``: one netlink batch, answers per change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

OVERLAY_TABLE = 42
MAIN_TABLE = 254


class OverlayKernelError(Exception):
    """A kernel operation failed; the message names the object and the kernel's reason."""


# -- the state the overlay owns ------------------------------------------------------------------
@dataclass(frozen=True)
class Link:
    """A device the overlay owns, as it should be or as the kernel has it."""

    name: str
    kind: Literal["vxlan", "bridge"]
    mtu: int
    addresses: frozenset[str] = frozenset()     # "44.128.0.1/20"
    mac: str | None = None                      # None: whatever the kernel chose (bridges)
    up: bool = True
    # vxlan only (IFLA_VXLAN_*): changing any of these means re-creating the device.
    vni: int | None = None
    port: int | None = None
    local: str | None = None
    learning: bool | None = None

    def identity(self) -> tuple[str, int | None, int | None, str | None, bool | None]:
        return (self.kind, self.vni, self.port, self.local, self.learning)


@dataclass(frozen=True, order=True)
class Neighbour:
    """Permanent ARP entry on the VXLAN device: peer VTEP IP → peer VTEP MAC."""

    ip: str
    mac: str


@dataclass(frozen=True, order=True)
class FdbEntry:
    """VXLAN forwarding entry (NTF_SELF): peer VTEP MAC → peer underlay IP."""

    mac: str
    dst: str


@dataclass(frozen=True, order=True)
class Route:
    """A route out of the VXLAN device: ``dst`` via ``gateway`` onlink, in ``table``."""

    dst: str          # "9.0.3.0/24" or "198.18.0.13/32"
    gateway: str
    table: int = MAIN_TABLE


@dataclass(frozen=True, order=True)
class Rule:
    """``ip rule from <src> lookup <table> priority <priority>``."""

    src: str
    table: int
    priority: int


Entry = Neighbour | FdbEntry | Route | Rule


@dataclass(frozen=True)
class Change:
    action: Literal["add", "delete"]
    entry: Entry


@dataclass(frozen=True)
class ChangeError:
    change: Change
    reason: str


@dataclass
class KernelState:
    """What the kernel holds of the overlay (missing links are simply absent)."""

    links: dict[str, Link] = field(default_factory=dict)
    neighbours: set[Neighbour] = field(default_factory=set)
    fdb: set[FdbEntry] = field(default_factory=set)
    routes: set[Route] = field(default_factory=set)
    rules: set[Rule] = field(default_factory=set)
    ip_forwarding: bool = False


@dataclass(frozen=True)
class ContainerVeth:
    """A task's interface: ``host_ifname`` on ``bridge``, ``ifname`` inside ``netns``."""

    host_ifname: str
    bridge: str
    netns: str
    address: str          # "9.0.0.2/25"
    gateway: str
    mtu: int
    ifname: str = "eth0"


class OverlayNetlink(Protocol):
    def read(self, vtep: str, bridges: Sequence[str]) -> KernelState:
        """The overlay's links, the entries on ``vtep`` and the table-42 rules. Never raises for
        missing devices (they are absent from the result)."""

    def link_mtu_of(self, address: str) -> int | None:
        """MTU of the link holding ``address`` (the underlay), None if no link has it."""

    def create_link(self, link: Link) -> None:
        """Create ``link`` and bring it to the given state. Raises OverlayKernelError."""

    def update_link(self, link: Link) -> None:
        """Set mtu, mac, up and exactly ``addresses`` on an existing link. Raises OverlayKernelError."""

    def delete_link(self, name: str) -> None:
        """Remove a link; a missing one is fine."""

    def apply(self, vtep: str, changes: Sequence[Change]) -> list[ChangeError]:
        """Apply neighbour/FDB/route/rule changes in one batch. Adds replace what has the same key
        (neighbour ip, route dst+table, FDB mac); deleting what is already gone succeeds.
        Failures are returned per change, never raised."""

    def set_ip_forwarding(self, enabled: bool) -> None:
        """net.ipv4.ip_forward in the overlay's namespace."""

    def add_veth(self, veth: ContainerVeth) -> None:
        """(Re)create the task's veth pair, enslave the host end, address and route the task end.
        Raises OverlayKernelError (e.g. the task namespace does not exist)."""

    def delete_veth(self, host_ifname: str) -> None:
        """Remove the pair by its host end; a missing one is fine."""

    def veths(self, bridges: Sequence[str]) -> set[str]:
        """Host ends of the veths enslaved to ``bridges``."""

    def netns_exists(self, netns: str) -> bool:
        """Whether the named task namespace still exists."""
