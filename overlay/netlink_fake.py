"""The overlay seam in memory, for tests: the kernel's keys and replace semantics, and a record
of every call so a test asserts what the code under test asked the kernel for."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from overlay.netlink import (
    OVERLAY_TABLE,
    Change,
    ChangeError,
    ContainerVeth,
    Entry,
    FdbEntry,
    KernelState,
    Link,
    Neighbour,
    OverlayKernelError,
    Route,
    Rule,
)

WRITES = frozenset({"create_link", "update_link", "delete_link", "apply", "set_ip_forwarding", "add_veth",
                    "delete_veth"})


@dataclass(frozen=True)
class Call:
    method: str
    args: tuple[Any, ...]


class FakeNetlink:
    """The kernel's overlay state in memory, with the kernel's keys and replace semantics.

    ``calls`` records every call, method and arguments, in order: what the code under test asked
    for, whatever the outcome. ``writes`` counts the changes asked for (each change of an
    ``apply`` one), so "nothing to do" means nothing was asked. ``fail`` holds entries whose
    changes fail; ``fail_links`` link names whose create/update fail.
    """

    def __init__(self, underlay: dict[str, int] | None = None) -> None:
        self.links: dict[str, Link] = {}
        self.neighbours: dict[str, str] = {}            # ip → mac
        self.fdb: set[FdbEntry] = set()
        self.routes: dict[tuple[str, int], str] = {}    # (dst, table) → gateway
        self.rules: set[Rule] = set()
        self.ip_forwarding = False
        self.underlay = dict(underlay or {})            # address → link MTU
        self.namespaces: set[str] = set()
        self.container_veths: dict[str, ContainerVeth] = {}
        self.fail: set[Entry] = set()
        self.fail_links: set[str] = set()
        self.calls: list[Call] = []

    def _record(self, method: str, *args: Any) -> None:
        self.calls.append(Call(method, args))

    @property
    def writes(self) -> int:
        return sum(len(call.args[1]) if call.method == "apply" else 1
                   for call in self.calls if call.method in WRITES)

    def called(self, since: int = 0) -> list[str]:
        """The methods called from ``calls[since]`` on."""
        return [call.method for call in self.calls[since:]]

    def read(self, vtep: str, bridges: Sequence[str]) -> KernelState:
        self._record("read", vtep, tuple(bridges))
        names = {vtep, *bridges}
        has_vtep = vtep in self.links
        return KernelState(
            links={n: link for n, link in self.links.items() if n in names},
            neighbours={Neighbour(ip, mac) for ip, mac in self.neighbours.items()} if has_vtep else set(),
            fdb=set(self.fdb) if has_vtep else set(),
            routes={Route(dst, gw, table) for (dst, table), gw in self.routes.items()} if has_vtep else set(),
            rules={r for r in self.rules if r.table == OVERLAY_TABLE},
            ip_forwarding=self.ip_forwarding,
        )

    def link_mtu_of(self, address: str) -> int | None:
        self._record("link_mtu_of", address)
        return self.underlay.get(address)

    def create_link(self, link: Link) -> None:
        self._record("create_link", link)
        self._link_check(link.name)
        if link.name in self.links:
            raise OverlayKernelError(f"{link.name}: File exists")
        self.links[link.name] = replace(link, mac=link.mac or "02:00:00:00:00:01")

    def update_link(self, link: Link) -> None:
        self._record("update_link", link)
        self._link_check(link.name)
        current = self.links.get(link.name)
        if current is None:
            raise OverlayKernelError(f"{link.name}: No such device")
        self.links[link.name] = replace(current, mtu=link.mtu, up=link.up, addresses=link.addresses,
                                        mac=link.mac or current.mac)

    def delete_link(self, name: str) -> None:
        self._record("delete_link", name)
        link = self.links.pop(name, None)
        if link is not None and link.kind == "vxlan":
            # Entries on a device go with it, as in the kernel.
            self.neighbours.clear()
            self.fdb.clear()
            self.routes.clear()

    def _link_check(self, name: str) -> None:
        if name in self.fail_links:
            raise OverlayKernelError(f"{name}: injected failure")

    def apply(self, vtep: str, changes: Sequence[Change]) -> list[ChangeError]:
        self._record("apply", vtep, list(changes))
        errors = []
        for change in changes:
            entry = change.entry
            if entry in self.fail:
                errors.append(ChangeError(change, "injected failure"))
            elif not isinstance(entry, Rule) and vtep not in self.links:
                errors.append(ChangeError(change, f"{vtep}: No such device"))
            elif change.action == "add":
                self._add(entry)
            else:
                self._delete(entry)
        return errors

    def _add(self, entry: Entry) -> None:
        match entry:
            case Neighbour(ip, mac):
                self.neighbours[ip] = mac
            case FdbEntry(mac, dst):
                # NLM_F_REPLACE on a VXLAN FDB entry replaces the remote of that MAC.
                self.fdb = {e for e in self.fdb if e.mac != mac} | {FdbEntry(mac, dst)}
            case Route(dst, gateway, table):
                self.routes[(dst, table)] = gateway
            case Rule():
                self.rules.add(entry)

    def _delete(self, entry: Entry) -> None:
        match entry:
            case Neighbour(ip, _):
                self.neighbours.pop(ip, None)
            case FdbEntry():
                self.fdb.discard(entry)
            case Route(dst, gateway, table):
                if self.routes.get((dst, table)) == gateway:
                    del self.routes[(dst, table)]
            case Rule():
                self.rules.discard(entry)

    def set_ip_forwarding(self, enabled: bool) -> None:
        self._record("set_ip_forwarding", enabled)
        self.ip_forwarding = enabled

    def add_veth(self, veth: ContainerVeth) -> None:
        self._record("add_veth", veth)
        if veth.netns not in self.namespaces:
            raise OverlayKernelError(f"network namespace {veth.netns!r} does not exist")
        if veth.bridge not in self.links:
            raise OverlayKernelError(f"{veth.bridge}: No such device")
        self.container_veths[veth.host_ifname] = veth

    def delete_veth(self, host_ifname: str) -> None:
        self._record("delete_veth", host_ifname)
        self.container_veths.pop(host_ifname, None)

    def veths(self, bridges: Sequence[str]) -> set[str]:
        self._record("veths", tuple(bridges))
        return {name for name, v in self.container_veths.items() if v.bridge in bridges}

    def netns_exists(self, netns: str) -> bool:
        self._record("netns_exists", netns)
        return netns in self.namespaces
