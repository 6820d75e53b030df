"""VIP labels as DC/OS read them, and the DNS names VIPs get.

A port label whose key starts with ``VIP``/``vip`` (``VIP_0``…) declares a VIP for that port; so
does a task label ``vip_portN`` for port N. The value is either a named VIP ``"/name:port"``
(``"name:port"`` is read the same way) or an address VIP ``"ip:port"``. The protocol comes from
the port. A named VIP ``/shop/web`` of framework ``marathon`` is published as
``shopweb.marathon.l4lb.thisdcos.directory``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

L4LB_DOMAIN = "l4lb.thisdcos.directory"

_TASK_LABEL = re.compile(r"^vip_port(\d+)$", re.IGNORECASE)
_NOT_IN_LABEL = re.compile(r"[^a-z0-9-]")


class VipLabelError(ValueError):
    """A VIP label value that cannot be served; the message names what is wrong."""


@dataclass(frozen=True)
class VipSpec:
    """One parsed VIP label value: either ``name`` (named VIP, "/"-prefixed) or ``address``."""

    port: int
    name: str | None = None
    address: str | None = None

    @property
    def is_named(self) -> bool:
        return self.name is not None


def is_vip_label_key(key: str) -> bool:
    return key[:3].lower() == "vip"


def task_label_port_index(key: str) -> int | None:
    """``vip_port2`` → 2; None for any other task label."""
    match = _TASK_LABEL.match(key)
    return int(match.group(1)) if match else None


def parse_vip(value: str) -> VipSpec:
    """Parse ``"/name:port"``, ``"name:port"`` or ``"ip:port"``; raises VipLabelError."""
    text = value.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise VipLabelError(f"VIP {value!r}: expected '/name:port' or 'ip:port'")
    try:
        port = int(port_text)
    except ValueError:
        raise VipLabelError(f"VIP {value!r}: port {port_text!r} is not a number") from None
    if not 1 <= port <= 65535:
        raise VipLabelError(f"VIP {value!r}: port {port} is outside 1-65535")
    if host.startswith("/"):
        return VipSpec(port=port, name=_named(value, host))
    try:
        address = ipaddress.ip_address(host[1:-1] if host[0] == "[" and host[-1] == "]" else host)
    except ValueError:
        if host[0].isdigit() and all(part.isdigit() for part in host.split(".")):
            raise VipLabelError(f"VIP {value!r}: {host!r} is not a valid IPv4 address") from None
        return VipSpec(port=port, name=_named(value, "/" + host))
    if address.version != 4:
        raise VipLabelError(f"VIP {value!r}: only IPv4 address VIPs are supported")
    return VipSpec(port=port, address=str(address))


def _named(value: str, name: str) -> str:
    if not dns_label(name):
        raise VipLabelError(f"VIP {value!r}: name {name!r} has no characters usable in DNS")
    return name


def dns_label(name: str) -> str:
    """The DNS label of a VIP name: lowercased, ``_`` → ``-``, ``/`` and anything outside [a-z0-9-] dropped."""
    return _NOT_IN_LABEL.sub("", name.lower().replace("_", "-"))


def vip_dns_name(name: str, framework: str) -> str:
    """``("/web", "marathon")`` → ``web.marathon.l4lb.thisdcos.directory``."""
    return f"{dns_label(name)}.{dns_label(framework)}.{L4LB_DOMAIN}"


def vip_address_key(name: str, framework: str) -> str:
    """The key of ``ClusterView.vip_addresses`` for a named VIP: ``"marathon:/web"``."""
    return f"{framework}:{name if name.startswith('/') else '/' + name}"


def named_vip(label_key: str, label_value: str) -> str | None:
    """``("VIP_0", "/shop/web:80")`` → ``"/shop/web"``; ``None`` for other labels, address VIPs
    and values agents could not serve (no address is spent on those)."""
    if not is_vip_label_key(label_key):
        return None
    try:
        return parse_vip(label_value).name
    except VipLabelError:
        return None


# -- problems: the one checker the master (as an app is stored) and agents (as they build their
#    VIP table) both use, so both tell users the same thing ------------------------------------
class VipLabelProblem(NamedTuple):
    app_id: str
    message: str


class VipClaim(NamedTuple):
    """An app's claim on an address VIP; ``where`` names the label in messages ("" if unknown)."""

    app_id: str
    address: str
    port: int
    protocol: str
    where: str = ""

    @property
    def vip(self) -> tuple[str, int, str]:
        return self.address, self.port, self.protocol


SHARED_ADDRESS_VIP = "served as one VIP with the union of their backends"


def address_vip_clashes(claims: Iterable[VipClaim], concerning: str | None = None) -> list[VipLabelProblem]:
    """Address VIPs claimed by more than one app: one problem for each app concerned, naming the
    others. Such a VIP is served once with the union of the apps' backends, as DC/OS did.
    With ``concerning``, only the VIPs that app claims, its own problem first."""
    apps_by_vip: dict[tuple[str, int, str], dict[str, str]] = {}
    for claim in claims:
        where = apps_by_vip.setdefault(claim.vip, {})
        if not where.get(claim.app_id):
            where[claim.app_id] = claim.where
    problems: list[VipLabelProblem] = []
    for (address, port, protocol), apps in sorted(apps_by_vip.items()):
        if len(apps) < 2 or (concerning is not None and concerning not in apps):
            continue
        order = sorted(apps, key=lambda app: (app != concerning, app))
        for app_id in order:
            others = ", ".join(sorted(set(apps) - {app_id}))
            prefix = f"{apps[app_id]}: " if apps[app_id] else ""
            problems.append(VipLabelProblem(
                app_id, f"{prefix}address VIP {address}:{port}/{protocol} is also claimed by {others}; "
                        f"{SHARED_ADDRESS_VIP}"))
    return problems


def app_vip_claims(app_id: str, port_labels: Sequence[Mapping[str, str]],
                   protocols: Sequence[tuple[str, ...]]) -> tuple[list[VipClaim], list[VipLabelProblem]]:
    """An app's port VIP labels: its address-VIP claims, and a problem for each value agents
    cannot serve (skipped there; the app's other VIPs keep working)."""
    claims: list[VipClaim] = []
    problems: list[VipLabelProblem] = []
    for index, key, value, protocol in _port_vip_labels(port_labels, protocols):
        try:
            spec = parse_vip(value)
        except VipLabelError as exc:
            problems.append(VipLabelProblem(app_id, f"port {index} label {key}: {exc}; this VIP is skipped"))
            continue
        if spec.address is not None:
            claims.append(VipClaim(app_id, spec.address, spec.port, protocol, f"port {index} label {key}"))
    return claims, list(dict.fromkeys(problems))     # a udp,tcp port's bad label once


def vip_label_problems(app_id: str, port_labels: Sequence[Mapping[str, str]], protocols: Sequence[tuple[str, ...]],
                       others: Mapping[str, tuple[Sequence[Mapping[str, str]], Sequence[tuple[str, ...]]]],
                       ) -> list[VipLabelProblem]:
    """What agents will report about one app's VIP labels: values they cannot serve, and address
    VIPs that another app (``others``: app id → its port labels and protocols) also claims —
    reported to both apps."""
    claims, problems = app_vip_claims(app_id, port_labels, protocols)
    every = list(claims)
    for other_id, (other_labels, other_protocols) in others.items():
        if other_id != app_id:
            every += [c._replace(where="") for c in app_vip_claims(other_id, other_labels, other_protocols)[0]]
    return problems + address_vip_clashes(every, concerning=app_id)


def _port_vip_labels(port_labels: Sequence[Mapping[str, str]],
                     protocols: Sequence[tuple[str, ...]]) -> Iterator[tuple[int, str, str, str]]:
    """(port index, key, value, protocol) of every VIP label; a ``udp,tcp`` port gives one of each."""
    for index, (labels, port_protocols) in enumerate(zip(port_labels, protocols, strict=True)):
        for key, value in sorted(labels.items()):
            if is_vip_label_key(key):
                for protocol in port_protocols:
                    yield index, key, value, protocol
