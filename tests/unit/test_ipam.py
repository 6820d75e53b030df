"""Overlay IPAM: the master's per-agent allocations and the agent's container addresses."""

from __future__ import annotations

import ipaddress
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.ipam import AddressPoolExhausted, ContainerIpam, IpamError, OverlayIpam, vtep_mac
from cluster.view import OverlayConfig


def test_first_agent_gets_dcos_defaults() -> None:
    a = OverlayIpam().allocate("agent-1")
    assert a.vtep_ip == "44.128.0.1"
    assert a.vtep_mac == "70:b3:d5:80:00:01"
    assert a.subnet == "9.0.0.0/24"
    assert (a.m_dcos, a.d_dcos) == ("9.0.0.0/25", "9.0.0.128/25")


def test_mac_is_prefix_plus_low_24_bits() -> None:
    assert vtep_mac("44.128.15.254") == "70:b3:d5:80:0f:fe"
    assert vtep_mac("10.1.2.3", "02:00:00") == "02:00:00:01:02:03"


def test_allocate_is_idempotent_and_distinct() -> None:
    ipam = OverlayIpam()
    first = ipam.allocate("a")
    assert ipam.allocate("a") == first
    second = ipam.allocate("b")
    assert second.vtep_ip != first.vtep_ip and second.subnet != first.subnet
    assert second.subnet == "9.0.1.0/24"


def test_release_returns_addresses_and_ignores_unknown() -> None:
    ipam = OverlayIpam()
    a = ipam.allocate("a")
    ipam.allocate("b")
    ipam.release("a")
    ipam.release("never-seen")
    assert ipam.get("a") is None
    c = ipam.allocate("c")
    assert (c.vtep_ip, c.subnet) == (a.vtep_ip, a.subnet)


def test_configurable_ranges() -> None:
    config = OverlayConfig(subnet="10.200.0.0/16", agent_prefixlen=26, vtep_subnet="192.168.77.0/24")
    a = OverlayIpam(config).allocate("x")
    assert a.vtep_ip == "192.168.77.1"
    assert a.subnet == "10.200.0.0/26"
    assert (a.m_dcos, a.d_dcos) == ("10.200.0.0/27", "10.200.0.32/27")


def test_exhaustion_is_clear_and_allocates_nothing() -> None:
    ipam = OverlayIpam(OverlayConfig(subnet="9.0.0.0/23", agent_prefixlen=24))
    ipam.allocate("a")
    ipam.allocate("b")
    with pytest.raises(AddressPoolExhausted, match="subnet: every address of 9.0.0.0/23"):
        ipam.allocate("c")
    assert ipam.get("c") is None
    assert set(ipam.allocations) == {"a", "b"}


@pytest.mark.parametrize(("config", "field"), [
    (OverlayConfig(subnet="nine"), "subnet"),
    (OverlayConfig(vtep_subnet="44.0.0.0/7"), "vtep_subnet"),
    (OverlayConfig(agent_prefixlen=8), "agent_prefixlen"),
    (OverlayConfig(agent_prefixlen=31), "agent_prefixlen"),
])
def test_bad_config_names_the_field(config: OverlayConfig, field: str) -> None:
    with pytest.raises(IpamError, match=field):
        OverlayIpam(config)


def test_bad_mac_prefix() -> None:
    with pytest.raises(IpamError, match="mac_prefix"):
        OverlayIpam(mac_prefix="01:00:5e")


def test_snapshot_roundtrip_through_json_keeps_allocations() -> None:
    ipam = OverlayIpam()
    for agent in ("a", "b", "c"):
        ipam.allocate(agent)
    ipam.release("b")
    restored = OverlayIpam.restore(json.loads(json.dumps(ipam.snapshot())))
    assert restored.allocations == ipam.allocations
    assert restored.allocate("a") == ipam.get("a")          # same identity keeps its allocation
    assert restored.allocate("d").subnet == "9.0.1.0/24"      # b's freed subnet, nothing held twice


def test_restore_rejects_conflicts_and_misfits() -> None:
    snap = OverlayIpam().snapshot()
    snap["agents"] = {
        "a": OverlayIpam().allocate("a").model_dump(),
        "b": OverlayIpam().allocate("b").model_dump(),   # same addresses as "a": a fresh ipam each
    }
    with pytest.raises(IpamError, match=r"agents\['b'\].vtep_ip: 44.128.0.1 is also held by agent 'a'"):
        OverlayIpam.restore(snap)
    snap["agents"] = {"a": OverlayIpam().allocate("a").model_dump()}
    with pytest.raises(IpamError, match="subnet: 9.0.0.0/24 is not a /24 of 10.0.0.0/8"):
        OverlayIpam.restore(snap, OverlayConfig(subnet="10.0.0.0/8"))
    with pytest.raises(IpamError, match="version"):
        OverlayIpam.restore({"agents": {}})


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 12)), max_size=60))
def test_never_two_agents_on_one_address(ops: list[tuple[bool, int]]) -> None:
    ipam = OverlayIpam(OverlayConfig(subnet="9.0.0.0/20", vtep_subnet="44.128.0.0/28"))
    for allocate, n in ops:
        agent = f"agent-{n}"
        if allocate:
            try:
                ipam.allocate(agent)
            except AddressPoolExhausted:
                assert len(ipam.allocations) == ipam.capacity
        else:
            ipam.release(agent)
        held = list(ipam.allocations.values())
        assert len({a.vtep_ip for a in held}) == len(held)
        assert len({a.subnet for a in held}) == len(held)
        assert len({a.vtep_mac for a in held}) == len(held)


# -- containers ------------------------------------------------------------------------------
def test_container_pool_skips_network_gateway_broadcast() -> None:
    pool = ContainerIpam("9.0.3.128/25", name="d-dcos")
    assert pool.gateway == "9.0.3.129"
    assert pool.size == 125
    addresses = {pool.allocate(f"t{i}") for i in range(125)}
    assert len(addresses) == 125
    assert not addresses & {"9.0.3.128", "9.0.3.129", "9.0.3.255"}
    assert all(ipaddress.IPv4Address(a) in ipaddress.IPv4Network("9.0.3.128/25") for a in addresses)
    with pytest.raises(AddressPoolExhausted, match=r"d-dcos \(9.0.3.128/25\) has no free address: all 125"):
        pool.allocate("one-too-many")


def test_container_allocate_idempotent_and_round_robin() -> None:
    pool = ContainerIpam("9.0.0.0/29")   # .2 .. .6
    assert pool.allocate("a") == "9.0.0.2"
    assert pool.allocate("a") == "9.0.0.2"
    assert pool.allocate("b") == "9.0.0.3"
    pool.release("a")
    assert pool.allocate("c") == "9.0.0.4"   # a's address is reused last
    for owner in ("d", "e"):
        pool.allocate(owner)
    assert pool.allocate("f") == "9.0.0.2"   # wrapped around to the only free one


def test_container_snapshot_roundtrip_and_validation() -> None:
    pool = ContainerIpam("9.0.0.0/25", name="m-dcos")
    pool.allocate("a")
    pool.allocate("b")
    restored = ContainerIpam.restore(json.loads(json.dumps(pool.snapshot())))
    assert restored.in_use == pool.in_use
    assert restored.allocate("c") == pool.allocate("c")
    bad = pool.snapshot() | {"owners": {"x": "9.0.0.1"}}
    with pytest.raises(IpamError, match="not a container address"):
        ContainerIpam.restore(bad)
    bad = pool.snapshot() | {"owners": {"x": "9.0.0.5", "y": "9.0.0.5"}}
    with pytest.raises(IpamError, match="also held by 'x'"):
        ContainerIpam.restore(bad)
