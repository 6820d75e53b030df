"""The resolver's loopback addresses, through pyroute2's asyncio API, in a namespace of the test's own."""

from __future__ import annotations

import asyncio

from kernel.netns import in_netns
from navstar.localnet import add_loopback_addresses


def test_loopback_addresses_are_added_once(netns) -> None:
    first = in_netns(netns.name, lambda: asyncio.run(add_loopback_addresses(["198.51.100.1", "198.51.100.2"])))
    again = in_netns(netns.name, lambda: asyncio.run(add_loopback_addresses(["198.51.100.2", "198.51.100.3"])))
    assert (first, again) == (["198.51.100.1", "198.51.100.2"], ["198.51.100.3"])
    shown = netns.run("ip", "-4", "-o", "addr", "show", "dev", "lo").stdout
    assert all(f"198.51.100.{i}/32" in shown for i in (1, 2, 3))
