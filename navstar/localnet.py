"""Node-local addresses on ``lo``: where DC/OS used the ``spartan`` dummy link, which this
kernel lacks, the resolver's addresses (198.51.100.1-3) go on loopback instead."""

from __future__ import annotations

import ipaddress

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

EEXIST = 17


async def add_loopback_addresses(addresses: list[str]) -> list[str]:
    """Adds each address as a /32 on ``lo`` of this namespace; returns those it added. Idempotent.

    A handful of requests, so pyroute2's asyncio API serves on the caller's loop (see
    ``kernel.offloop``)."""
    added = []
    async with AsyncIPRoute() as ipr:
        lo = (await ipr.link_lookup(ifname="lo"))[0]
        for address in addresses:
            ipaddress.IPv4Address(address)
            try:
                await ipr.addr("add", index=lo, address=address, prefixlen=32)
                added.append(address)
            except NetlinkError as exc:
                if exc.code != EEXIST:
                    raise
    return added
