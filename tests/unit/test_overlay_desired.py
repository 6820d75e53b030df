"""Cluster view → desired overlay state for one agent."""

from __future__ import annotations

import pytest

from cluster.ipam import OverlayIpam
from cluster.view import AgentInfo, ClusterView, OverlayAllocation, OverlayConfig
from overlay.desired import OverlayNotReady, desired_state, plan_mtu
from overlay.netlink import FdbEntry, Neighbour, Route, Rule


def make_view(n: int, config: OverlayConfig | None = None, version: int = 1) -> ClusterView:
    config = config or OverlayConfig()
    ipam = OverlayIpam(config)
    agents = [AgentInfo(agent_id=f"agent-{k}", hostname=f"agent-{k}", ip=f"198.18.7.{10 + k}",
                        overlay=ipam.allocate(f"agent-{k}")) for k in range(1, n + 1)]
    return ClusterView(version=version, agents=agents, overlay=config)


def test_layout_for_one_agent_of_three() -> None:
    d = desired_state(make_view(3), "agent-1", "198.18.7.11", 1500)
    assert d.vtep.name == "vtep1024" and d.vtep.kind == "vxlan"
    assert (d.vtep.vni, d.vtep.port, d.vtep.local, d.vtep.learning) == (1024, 64000, "198.18.7.11", False)
    assert d.vtep.addresses == {"44.128.0.1/20"}
    assert d.vtep.mac == "70:b3:d5:80:00:01"
    assert [(b.name, set(b.addresses), b.mtu) for b in d.bridges] == [
        ("m-dcos", {"9.0.0.1/25"}, 1420), ("d-dcos", {"9.0.0.129/25"}, 1420)]
    assert d.peers == ("agent-2", "agent-3")
    assert Neighbour("44.128.0.3", "70:b3:d5:80:00:03") in d.neighbours
    assert FdbEntry("70:b3:d5:80:00:03", "198.18.7.13") in d.fdb
    assert Route("9.0.2.0/24", "44.128.0.3", 254) in d.routes
    assert Route("198.18.7.13/32", "44.128.0.3", 42) in d.routes
    assert len(d.neighbours) == len(d.fdb) == 2 and len(d.routes) == 4
    assert d.rules == {Rule("9.0.0.0/8", 42, 32000)}
    # nothing about itself
    assert all(n.ip != "44.128.0.1" for n in d.neighbours)


def test_not_ready_without_allocation() -> None:
    view = make_view(2)
    view.agents[0].overlay = None
    with pytest.raises(OverlayNotReady, match="agent-1"):
        desired_state(view, "agent-1", "198.18.7.11", 1500)
    with pytest.raises(OverlayNotReady):
        desired_state(view, "not-there", "198.18.7.99", 1500)


def test_remembered_allocation_is_used_when_view_lacks_it() -> None:
    view = make_view(2)
    mine = view.agents[0].overlay
    view.agents[0].overlay = None
    d = desired_state(view, "agent-1", "198.18.7.11", 1500, allocation=mine)
    assert d.vtep.addresses == {"44.128.0.1/20"} and d.peers == ("agent-2",)


def test_bad_or_duplicate_peers_are_skipped_with_reasons() -> None:
    view = make_view(4)
    view.agents[1].overlay = OverlayAllocation(**(view.agents[1].overlay.model_dump() | {"vtep_ip": "10.0.0.1"}))
    view.agents[2].overlay = view.agents[3].overlay.model_copy()     # agent-3 and agent-4 clash
    d = desired_state(view, "agent-1", "198.18.7.11", 1500)
    assert d.peers == ("agent-3",)
    assert "outside 44.128.0.0/20" in d.skipped["agent-2"]
    assert "also agent 'agent-3'" in d.skipped["agent-4"]


def test_leaver_disappears_from_desired() -> None:
    view = make_view(3)
    before = desired_state(view, "agent-1", "198.18.7.11", 1500)
    view.agents = [a for a in view.agents if a.agent_id != "agent-3"]
    after = desired_state(view, "agent-1", "198.18.7.11", 1500)
    assert after.peers == ("agent-2",)
    assert Route("9.0.2.0/24", "44.128.0.3", 254) in before.routes - after.routes


def test_configured_vni_port_mtu_and_ranges() -> None:
    config = OverlayConfig(vni=77, port=4789, mtu=1300, subnet="10.64.0.0/12", vtep_subnet="192.168.0.0/22")
    d = desired_state(make_view(2, config), "agent-2", "198.18.7.12", 1500)
    assert (d.vtep.vni, d.vtep.port) == (77, 4789)
    assert d.vtep.addresses == {"192.168.0.2/22"}
    assert d.bridges[0].mtu == 1300
    assert d.rules == {Rule("10.64.0.0/12", 42, 32000)}


@pytest.mark.parametrize(("underlay", "vtep", "container", "warns"), [
    (1500, 1450, 1420, False),
    (9000, 8950, 1420, False),
    (1400, 1350, 1350, True),
    (100, 68, 68, True),
    (None, 1450, 1420, True),
])
def test_mtu_plan(underlay: int | None, vtep: int, container: int, warns: bool) -> None:
    plan = plan_mtu(1420, underlay)
    assert (plan.vtep, plan.container, plan.warning is not None) == (vtep, container, warns)
