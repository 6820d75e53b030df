"""OverlayAgent against the fakes: views, container attachments, port mappings, restarts."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from cluster.ipam import AddressPoolExhausted
from overlay.agent import OverlayAgent
from overlay.container import ContainerNetworkError, host_ifname
from overlay.desired import OverlayNotReady
from overlay.netfilter import NatRules, PortMapping
from overlay.netfilter_fake import FakeNetfilter
from overlay.netfilter_kernel import rules_of, table_commands
from overlay.netlink_fake import FakeNetlink
from tests.unit.test_overlay_desired import make_view
from tests.waiting import wait_until_async

UNDERLAY = "198.18.7.11"


def make_agent(tmp_path: Path, kernel: FakeNetlink | None = None, nat: FakeNetfilter | None = None,
               **kwargs) -> OverlayAgent:
    kernel = kernel or FakeNetlink({UNDERLAY: 1500})
    kernel.namespaces |= {"task-a", "task-b", "task-c"}
    return OverlayAgent(kernel, "agent-1", UNDERLAY, netfilter=nat or FakeNetfilter(), state_dir=tmp_path,
                        registry=CollectorRegistry(), **kwargs)


def test_before_a_view_nothing_is_touched_and_attach_is_refused(tmp_path: Path) -> None:
    agent = make_agent(tmp_path)
    assert agent.reconcile().errors == ["no cluster view yet"]
    assert agent.netlink.writes == 0
    with pytest.raises(OverlayNotReady):
        agent.attach_container("t1", "task-a", "m-dcos")


def test_view_programs_kernel_and_masquerade(tmp_path: Path) -> None:
    agent = make_agent(tmp_path)
    result = agent.on_view(make_view(3))
    assert result.ok and result.peers == 2
    assert agent.netfilter.rules == NatRules(UNDERLAY, "9.0.0.0/8", "vtep1024", frozenset())
    applies = agent.netfilter.applies
    assert agent.on_view(make_view(3, version=2)).changes == 0
    assert agent.netfilter.applies == applies


def test_attach_mesos_and_docker_containers(tmp_path: Path) -> None:
    agent = make_agent(tmp_path)
    agent.on_view(make_view(3))
    mesos = agent.attach_container("t1", "task-a", "m-dcos")
    docker = agent.attach_container("t2", "task-b", "d-dcos")
    assert (mesos.ip, mesos.gateway, mesos.mtu, mesos.prefixlen) == ("9.0.0.2", "9.0.0.1", 1420, 25)
    assert (docker.ip, docker.gateway) == ("9.0.0.130", "9.0.0.129")
    veth = agent.netlink.container_veths[host_ifname("t1")]
    assert (veth.netns, veth.bridge, veth.address, veth.gateway) == ("task-a", "m-dcos", "9.0.0.2/25", "9.0.0.1")
    assert agent.attach_container("t1", "task-a", "m-dcos") == mesos          # idempotent
    assert agent.metrics.registry.get_sample_value("navstar_overlay_containers_attached", {"bridge": "m-dcos"}) == 1


def test_bridge_port_mappings_become_nat_rules(tmp_path: Path) -> None:
    agent = make_agent(tmp_path)
    agent.on_view(make_view(2))
    a = agent.attach_container("web", "task-a", "d-dcos", [(31005, 80, "tcp"), (0, 53, "udp")])
    assert a.port_mappings == (PortMapping(31005, a.ip, 80, "tcp"), PortMapping(31000, a.ip, 53, "udp"))
    assert agent.netfilter.rules.port_mappings == set(a.port_mappings)
    with pytest.raises(ContainerNetworkError, match=r"port_mappings\[0\].host_port: 31005/tcp is already mapped to task web"):
        agent.attach_container("other", "task-b", "d-dcos", [(31005, 8080, "tcp")])
    assert "other" not in agent.containers.tasks
    agent.detach_container("web")
    assert agent.netfilter.rules.port_mappings == frozenset()
    assert host_ifname("web") not in agent.netlink.container_veths
    agent.detach_container("web")   # again: nothing happens


def test_a_port_mapped_for_both_protocols_gets_one_host_port_free_for_both(tmp_path: Path) -> None:
    agent = make_agent(tmp_path)
    agent.on_view(make_view(2))
    agent.attach_container("dns", "task-a", "d-dcos", [(31000, 5353, "udp")])     # 31000/udp taken
    both = agent.attach_container("ns", "task-b", "d-dcos", [(0, 53, "tcp"), (0, 53, "udp")])
    assert [(m.host_port, m.protocol) for m in both.port_mappings] == [(31001, "tcp"), (31001, "udp")]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"bridge": "docker0"}, "bridge: 'docker0' is not one of m-dcos, d-dcos"),
    ({"port_mappings": [(70000, 80, "tcp")]}, r"port_mappings\[0\].host_port: 70000 is outside 0-65535"),
    ({"port_mappings": [(31000, 0, "tcp")]}, r"port_mappings\[0\].container_port: 0 is outside 1-65535"),
    ({"port_mappings": [(31000, 80, "sctp")]}, r"port_mappings\[0\].protocol: 'sctp'"),
    ({"port_mappings": [(31000, 80, "tcp"), (31000, 81, "tcp")]}, r"port_mappings\[1\].host_port: 31000/tcp is mapped twice"),
    ({"port_mappings": [("80", 80, "tcp")]}, r"host_port: '80' is not a port number"),
    ({"netns_name": "../x"}, "netns_name"),
])
def test_bad_attach_input_names_the_field(tmp_path: Path, kwargs: dict, message: str) -> None:
    agent = make_agent(tmp_path)
    agent.on_view(make_view(2))
    args = {"task_id": "t", "netns_name": "task-a", "bridge": "d-dcos"} | kwargs
    with pytest.raises(ContainerNetworkError, match=message):
        agent.attach_container(**args)
    assert agent.containers.tasks == {}


def test_exhausted_half_refuses_clearly_and_reuses_nothing(tmp_path: Path) -> None:
    agent = make_agent(tmp_path)
    agent.on_view(make_view(2))
    agent.netlink.namespaces |= {f"ns{i}" for i in range(126)}
    ips = {agent.attach_container(f"t{i}", f"ns{i}", "m-dcos").ip for i in range(125)}
    assert len(ips) == 125
    with pytest.raises(AddressPoolExhausted, match=r"m-dcos \(9.0.0.0/25\) has no free address"):
        agent.attach_container("t125", "ns125", "m-dcos")
    freed = agent.attachment("t7").ip
    agent.detach_container("t7")
    assert agent.attach_container("t125", "ns125", "m-dcos").ip == freed   # the only free one


def test_kernel_failure_on_attach_keeps_nothing(tmp_path: Path) -> None:
    agent = make_agent(tmp_path)
    agent.on_view(make_view(2))
    from overlay.netlink import OverlayKernelError
    with pytest.raises(OverlayKernelError, match="does not exist"):
        agent.attach_container("t1", "no-such-ns", "m-dcos")
    assert agent.containers.pools["m-dcos"].in_use == {}


def test_restart_keeps_allocation_and_task_addresses(tmp_path: Path) -> None:
    kernel = FakeNetlink({UNDERLAY: 1500})
    nat = FakeNetfilter()
    first = make_agent(tmp_path, kernel, nat)
    first.on_view(make_view(3))
    a = first.attach_container("t1", "task-a", "d-dcos", [(31001, 80, "tcp")])
    b = first.attach_container("t2", "task-b", "m-dcos")
    saved = json.loads((tmp_path / "overlay.json").read_text())
    assert saved["allocation"]["subnet"] == "9.0.0.0/24"
    writes = kernel.writes

    second = make_agent(tmp_path, kernel, nat)
    assert second.allocation == first.allocation
    assert second.attachment("t1") == a and second.attachment("t2") == b
    assert second.attach_container("t3", "task-c", "d-dcos").ip not in {a.ip, b.ip}
    writes_after_attach = kernel.writes
    assert writes_after_attach == writes + 1
    result = second.on_view(make_view(3, version=9))
    assert result.ok and result.changes == 0         # adopted: nothing rebuilt


def test_periodic_pass_repairs_veths_and_forgets_dead_tasks(tmp_path: Path) -> None:
    agent = make_agent(tmp_path)
    agent.on_view(make_view(2))
    agent.attach_container("t1", "task-a", "m-dcos")
    agent.attach_container("t2", "task-b", "m-dcos")
    del agent.netlink.container_veths[host_ifname("t1")]
    agent.netlink.namespaces.discard("task-b")
    result = agent.reconcile()
    assert result.repairs == 2
    assert host_ifname("t1") in agent.netlink.container_veths
    assert "t2" not in agent.containers.tasks
    assert agent.containers.pools["m-dcos"].in_use == {"t1": "9.0.0.2"}


def test_nat_drift_is_repaired(tmp_path: Path) -> None:
    agent = make_agent(tmp_path)
    agent.on_view(make_view(2))
    agent.attach_container("t1", "task-a", "d-dcos", [(31001, 80, "tcp")])
    agent.netfilter.rules = None
    result = agent.reconcile()
    assert result.repairs == 1 and agent.netfilter.rules.port_mappings


async def test_apply_view_programs_from_a_coroutine(tmp_path: Path) -> None:
    agent = make_agent(tmp_path)
    result = await agent.apply_view(make_view(2))
    assert result.ok and set(agent.netlink.neighbours) == {"44.128.0.2"}


async def test_run_repairs_on_its_period(tmp_path: Path) -> None:
    agent = make_agent(tmp_path, reconcile_interval=0.05)
    agent.on_view(make_view(3))

    def passes() -> int:                             # each pass reads the kernel once
        return sum(call.method == "read" for call in agent.netlink.calls)

    on_view = passes()
    task = asyncio.create_task(agent.run())
    try:
        await wait_until_async(lambda: passes() > on_view, timeout=10, message="the pass run() starts with")
        agent.netlink.routes.clear()                 # drift after that pass started
        before = passes()
        await wait_until_async(lambda: len(agent.netlink.routes) == 4 and passes() > before, timeout=10,
                               message="routes put back and a later pass run")
    finally:
        task.cancel()


def test_nftables_rules_read_back_only_when_exactly_ours() -> None:
    rules = NatRules("198.18.0.11", "9.0.0.0/8", "vtep1024",
                     frozenset({PortMapping(31000, "9.0.0.130", 80), PortMapping(31001, "9.0.0.131", 53, "udp")}))
    written = [command["add"] for command in table_commands(rules) if "add" in command]   # as read back
    assert rules_of(written) == rules
    assert rules_of([obj for obj in written if obj.get("rule", {}).get("chain") != "ports-output"]) is None
    foreign = {"rule": {"family": "ip", "table": "navstar-overlay", "chain": "ports", "expr": [{"accept": None}]}}
    assert rules_of([*written, foreign]) is None
    bare = NatRules("198.18.0.11", "9.0.0.0/8", "vtep1024")
    assert rules_of([command["add"] for command in table_commands(bare) if "add" in command]) == \
        NatRules("", "9.0.0.0/8", "vtep1024"), "no mapping: the agent address is not in the rules"
