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
from dataclasses import dataclass

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
