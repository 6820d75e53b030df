"""Named-VIP addresses: one address from ``11.0.0.0/8`` per name, allocated once by the master.

A port label whose key starts with ``VIP``/``vip`` and whose value is ``/name:port`` (or
``name:port``) names a VIP; the key ``marathon:/name`` gets an address that every agent sees the
same (it travels in the cluster view) and that survives master restarts (the caller persists
``allocations``). When no app uses a name anymore its address is freed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import NamedTuple

from minuteman.labels import VipLabelError, is_vip_label_key, parse_vip

NAMED_VIP_POOL = ipaddress.IPv4Network("11.0.0.0/8")


def named_vip(label_key: str, label_value: str) -> str | None:
    """``("VIP_0", "/shop/web:80")`` → ``"/shop/web"``; ``None`` for other labels, address VIPs
    and values agents could not serve (no address is spent on those)."""
    if not is_vip_label_key(label_key):
        return None
    try:
        return parse_vip(label_value).name
    except VipLabelError:
        return None


class VipLabelProblem(NamedTuple):
    app_id: str
    message: str


def vip_label_problems(app_id: str, port_labels: list[dict[str, str]], protocols: list[tuple[str, ...]],
                       others: dict[str, tuple[list[dict[str, str]], list[tuple[str, ...]]]]) -> list[VipLabelProblem]:
    """What agents will report about the VIP labels of one app, each message naming the label:
    values they cannot serve (skipped there; the app's other VIPs keep working), and address VIPs
    that another app (``others``: app id → its port labels and protocols) also claims — served as
    one VIP with the union of their backends, as DC/OS did, and reported to both apps."""
    problems: list[VipLabelProblem] = []
    mine: dict[tuple[str, int, str], str] = {}
    for index, key, value, protocol in _vip_labels(port_labels, protocols):
        try:
            spec = parse_vip(value)
        except VipLabelError as exc:
            problems.append(VipLabelProblem(app_id, f"port {index} label {key}: {exc}; this VIP is skipped"))
            continue
        if spec.address is not None:
            mine.setdefault((spec.address, spec.port, protocol), f"port {index} label {key}")
    for other_id, (other_labels, other_protocols) in sorted(others.items()):
        for _, _, value, protocol in _vip_labels(other_labels, other_protocols) if other_id != app_id else ():
            try:
                spec = parse_vip(value)
            except VipLabelError:
                continue
            claim = (spec.address or "", spec.port, protocol)
            if claim in mine:
                vip = f"address VIP {claim[0]}:{claim[1]}/{protocol}"
                union = "served as one VIP with the union of their backends"
                problems.append(VipLabelProblem(app_id, f"{mine[claim]}: {vip} is also claimed by {other_id}; {union}"))
                problems.append(VipLabelProblem(other_id, f"{vip} is also claimed by {app_id}; {union}"))
    return list(dict.fromkeys(problems))     # once each (a udp,tcp port's bad label, a VIP claimed twice)


def _vip_labels(port_labels: list[dict[str, str]], protocols: list[tuple[str, ...]]):
    """(port index, key, value, protocol) of every VIP label; a ``udp,tcp`` port gives one of each."""
    for index, (labels, port_protocols) in enumerate(zip(port_labels, protocols, strict=True)):
        for key, value in sorted(labels.items()):
            if is_vip_label_key(key):
                for protocol in port_protocols:
                    yield index, key, value, protocol


class VipAllocator:
    """Pure: ``sync(names)`` allocates what is new and frees what is gone; idempotent."""

    def __init__(self, allocations: dict[str, str] | None = None, framework: str = "marathon",
                 pool: ipaddress.IPv4Network = NAMED_VIP_POOL, next_address: str | None = None) -> None:
        self.framework = framework
        self.pool = pool
        self.allocations: dict[str, str] = dict(allocations or {})
        self._next = int(ipaddress.IPv4Address(next_address)) if next_address else int(pool.network_address) + 1

    @property
    def next_address(self) -> str:
        """Where the next search starts (persist it with the allocations)."""
        return str(ipaddress.IPv4Address(self._next))

    def key(self, name: str) -> str:
        return f"{self.framework}:{name}"

    def sync(self, names: Iterable[str]) -> bool:
        """Makes the allocations exactly ``names``; returns True when something changed."""
        wanted = {self.key(n) for n in names}
        changed = False
        for key in list(self.allocations):
            if key not in wanted:
                del self.allocations[key]
                changed = True
        for key in sorted(wanted - set(self.allocations)):
            self.allocations[key] = self._allocate()
            changed = True
        return changed

    def _allocate(self) -> str:
        used = {int(ipaddress.IPv4Address(a)) for a in self.allocations.values()}
        first, last = int(self.pool.network_address) + 1, int(self.pool.broadcast_address) - 1
        candidate = self._next
        for _ in range(last - first + 1):
            if candidate > last:
                candidate = first
            if candidate not in used:
                # Round-robin rather than lowest-free, so a freed address is not handed to a new
                # name while agents may still hold the old mapping.
                self._next = candidate + 1
                return str(ipaddress.IPv4Address(candidate))
            candidate += 1
        raise RuntimeError(f"named VIP pool {self.pool} is exhausted")
