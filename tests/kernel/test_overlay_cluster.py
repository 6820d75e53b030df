"""The overlay in the kernel: three agents on a private underlay, tasks talking across vtep1024.

Every namespace here comes from ``overlay.testbed.Testbed`` (unique names, all removed after).
"""

from __future__ import annotations

import asyncio
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from cluster.ipam import OverlayIpam
from cluster.view import AgentInfo, ClusterView
from overlay.agent import OverlayAgent
from overlay.container import host_ifname
from overlay.netfilter_kernel import NftablesNetfilter
from overlay.netlink_kernel import PyRoute2Netlink
from overlay.testbed import Testbed
from tests.waiting import wait_until, wait_until_async

SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(16)
while True:
    c, a = s.accept(); c.sendall(f"hello {a[0]}\\n".encode()); c.close()
"""
CLIENT = """
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)
print(c.recv(100).decode().strip())
"""


@dataclass
class Cluster:
    bed: Testbed
    agents: dict[int, OverlayAgent]
    view: ClusterView

    def connect(self, ns: str, host: str, port: int) -> str:
        """The first answer from host:port, retried until the server listens."""
        def attempt() -> str:
            done = self.bed.run(ns, sys.executable, "-c", CLIENT, host, str(port), check=False, timeout=20)
            return done.stdout.strip() if done.returncode == 0 else ""
        return wait_until(attempt, 20, message=f"an answer from {host}:{port} in {ns}")

    def serve(self, ns: str, port: int) -> None:
        self.bed.spawn(ns, sys.executable, "-c", SERVER, str(port))

    def ping(self, ns: str, address: str, *extra: str) -> bool:
        return self.bed.run(ns, "ping", "-c1", "-W2", *extra, address, check=False).returncode == 0


def make_view(bed: Testbed, version: int = 1) -> ClusterView:
    ipam = OverlayIpam()
    agents = [AgentInfo(agent_id=f"agent-{k}", hostname=f"agent-{k}", ip=bed.agent_ip(k),
                        overlay=ipam.allocate(f"agent-{k}")) for k in range(1, bed.agents + 1)]
    return ClusterView(version=version, agents=agents)


def start_agent(bed: Testbed, k: int, state: Path, **kwargs) -> OverlayAgent:
    return OverlayAgent(PyRoute2Netlink(bed.agent_ns(k)), f"agent-{k}", bed.agent_ip(k),
                        netfilter=NftablesNetfilter(bed.agent_ns(k)), state_dir=state / f"agent-{k}",
                        registry=CollectorRegistry(), **kwargs)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with Testbed(agents=3, underlay=f"198.18.{random.randint(100, 199)}.0/24") as bed:
        view = make_view(bed)
        agents = {k: start_agent(bed, k, tmp_path) for k in (1, 2, 3)}
        try:
            for agent in agents.values():
                assert agent.on_view(view).ok
            yield Cluster(bed, agents, view)
        finally:
            for agent in agents.values():
                agent.netlink.close()


def test_vtep_layout_as_ip_shows_it(cluster: Cluster) -> None:
    ns = cluster.bed.agent_ns(1)
    link = cluster.bed.run(ns, "ip", "-d", "link", "show", "vtep1024").stdout
    assert "vxlan id 1024" in link and "dstport 64000" in link and "nolearning" in link
    assert f"local {cluster.bed.agent_ip(1)}" in link and "70:b3:d5:80:00:01" in link
    assert "44.128.0.1/20" in cluster.bed.run(ns, "ip", "-br", "addr", "show", "vtep1024").stdout
    bridges = cluster.bed.run(ns, "ip", "-br", "addr").stdout
    assert "9.0.0.1/25" in bridges and "9.0.0.129/25" in bridges
    assert "9.0.2.0/24 via 44.128.0.3 dev vtep1024" in cluster.bed.run(ns, "ip", "route").stdout
    assert (f"{cluster.bed.agent_ip(3)} via 44.128.0.3 dev vtep1024"
            in cluster.bed.run(ns, "ip", "route", "show", "table", "42").stdout)
    assert "from 9.0.0.0/8 lookup 42" in cluster.bed.run(ns, "ip", "rule").stdout
    fdb = cluster.bed.run(ns, "bridge", "fdb", "show", "dev", "vtep1024").stdout
    assert f"70:b3:d5:80:00:03 dst {cluster.bed.agent_ip(3)} self permanent" in fdb
    assert "44.128.0.2 dev vtep1024 lladdr 70:b3:d5:80:00:02 PERMANENT" in cluster.bed.run(ns, "ip", "neigh").stdout


def test_container_on_agent_1_reaches_container_on_agent_3(cluster: Cluster) -> None:
    bed = cluster.bed
    mesos = cluster.agents[1].attach_container("mesos-task", bed.add_task("c1"), "m-dcos")
    docker = cluster.agents[3].attach_container("docker-task", bed.add_task("c3"), "d-dcos")
    assert mesos.ip == "9.0.0.2" and docker.ip == "9.0.2.130"
    assert cluster.ping(bed.task_ns("c1"), docker.ip)
    cluster.serve(bed.task_ns("c3"), 8080)
    # The server sees the container's own address: no NAT inside the overlay.
    assert cluster.connect(bed.task_ns("c1"), docker.ip, 8080) == f"hello {mesos.ip}"
    # Container MTU as planned, default route via the bridge.
    inside = bed.run(bed.task_ns("c1"), "ip", "-d", "link", "show", "eth0").stdout
    assert "mtu 1420" in inside
    assert "default via 9.0.0.1" in bed.run(bed.task_ns("c1"), "ip", "route").stdout
    # Table 42: another agent's own address is reached through the overlay, keeping the source.
    cluster.serve(bed.agent_ns(3), 9090)
    assert cluster.connect(bed.task_ns("c1"), bed.agent_ip(3), 9090) == f"hello {mesos.ip}"


def test_bridge_port_mapping_from_another_agent_and_from_the_agent(cluster: Cluster) -> None:
    bed = cluster.bed
    web = cluster.agents[1].attach_container("web", bed.add_task("web"), "d-dcos", [(31080, 8080, "tcp")])
    cluster.serve(bed.task_ns("web"), 8080)
    assert cluster.connect(bed.agent_ns(2), bed.agent_ip(1), 31080) == f"hello {bed.agent_ip(2)}"
    assert cluster.connect(bed.agent_ns(1), bed.agent_ip(1), 31080) == f"hello {bed.agent_ip(1)}"
    # A container elsewhere on the overlay uses the mapping too.
    cluster.agents[3].attach_container("client", bed.add_task("cl"), "m-dcos")
    assert cluster.connect(bed.task_ns("cl"), bed.agent_ip(1), 31080).startswith("hello ")
    # Detach removes the mapping: the port no longer answers.
    cluster.agents[1].detach_container("web")
    probe = bed.run(bed.agent_ns(2), sys.executable, "-c",
                    f"import socket; socket.create_connection(('{bed.agent_ip(1)}', 31080), timeout=1)", check=False)
    assert probe.returncode != 0
    assert web.ip not in bed.run(bed.agent_ns(1), "iptables-save", "-t", "nat").stdout


def test_overlay_traffic_leaving_the_overlay_is_masqueraded(cluster: Cluster) -> None:
    bed = cluster.bed
    cluster.agents[1].attach_container("out", bed.add_task("out"), "m-dcos")
    # 198.18.X.250 is on the underlay but no agent: reached via eth0, so masqueraded.
    prefixlen = bed.underlay.split("/")[1]
    outsider = bed.add_task("outsider")
    bed.run(bed.underlay_ns, "ip", "link", "add", "uo", "type", "veth", "peer", "name", "eth0", "netns", outsider)
    bed.run(bed.underlay_ns, "ip", "link", "set", "uo", "master", "br0", "up")
    address = bed.agent_ip(240)
    bed.run(outsider, "ip", "addr", "add", f"{address}/{prefixlen}", "dev", "eth0")
    bed.run(outsider, "ip", "link", "set", "eth0", "up")
    cluster.serve(outsider, 7070)
    assert cluster.connect(bed.task_ns("out"), address, 7070) == f"hello {bed.agent_ip(1)}"


def test_deleted_entries_are_put_back_by_the_periodic_pass(cluster: Cluster) -> None:
    bed = cluster.bed
    ns = bed.agent_ns(1)
    agent = cluster.agents[1]
    c1 = agent.attach_container("a", bed.add_task("d1"), "m-dcos")
    c2 = cluster.agents[2].attach_container("b", bed.add_task("d2"), "m-dcos")
    assert cluster.ping(bed.task_ns("d1"), c2.ip)
    sample = agent.metrics.registry.get_sample_value

    def repairs() -> dict[str, float | None]:
        return {kind: sample("navstar_overlay_repairs_total", {"object": kind})
                for kind in ("route", "neighbour", "fdb", "veth")}

    async def break_and_wait() -> None:
        agent.reconcile_interval = 2.0
        passes = sample("navstar_overlay_reconcile_runs_total", {"result": "ok"})
        runner = asyncio.create_task(agent.run())
        try:
            await wait_until_async(lambda: sample("navstar_overlay_reconcile_runs_total", {"result": "ok"}) > passes,
                                   message="the pass run() starts with")       # nothing to repair in it
            assert set(repairs().values()) == {None}
            bed.run(ns, "ip", "route", "del", "9.0.1.0/24")
            bed.run(ns, "ip", "neigh", "del", "44.128.0.2", "dev", "vtep1024")
            bed.run(ns, "bridge", "fdb", "del", "70:b3:d5:80:00:02", "dev", "vtep1024", "dst", bed.agent_ip(2))
            bed.run(ns, "ip", "link", "del", host_ifname("a"))
            assert not cluster.ping(bed.task_ns("d1"), c2.ip, "-W1")
            await wait_until_async(lambda: None not in repairs().values(), message="all four repaired")
        finally:
            runner.cancel()

    asyncio.run(break_and_wait())
    assert repairs() == {"route": 1, "neighbour": 1, "fdb": 1, "veth": 1}
    assert "9.0.1.0/24 via 44.128.0.2" in bed.run(ns, "ip", "route").stdout
    assert cluster.ping(bed.task_ns("d1"), c2.ip)
    assert c1.ip in bed.run(bed.task_ns("d1"), "ip", "-br", "addr").stdout


def test_restarted_agent_adopts_kernel_state_and_keeps_task_addresses(cluster: Cluster, tmp_path: Path) -> None:
    bed = cluster.bed
    before = cluster.agents[1].attach_container("keep", bed.add_task("k"), "d-dcos", [(31081, 80, "tcp")])
    cluster.agents[1].netlink.close()
    again = start_agent(bed, 1, tmp_path)
    cluster.agents[1] = again
    result = again.on_view(make_view(bed, version=2))
    assert result.ok and result.changes == 0, result
    assert again.attachment("keep") == before
    after = again.attach_container("new", bed.add_task("n"), "d-dcos")
    assert after.ip != before.ip


def test_leaving_agent_is_removed(cluster: Cluster) -> None:
    view = cluster.view.model_copy(deep=True)
    view.version = 2
    view.agents = [a for a in view.agents if a.agent_id != "agent-3"]
    result = cluster.agents[1].on_view(view)
    assert result.ok and result.peers == 1
    ns = cluster.bed.agent_ns(1)
    assert "9.0.2.0/24" not in cluster.bed.run(ns, "ip", "route").stdout
    assert cluster.bed.agent_ip(3) not in cluster.bed.run(ns, "bridge", "fdb", "show", "dev", "vtep1024").stdout
    assert "44.128.0.3" not in cluster.bed.run(ns, "ip", "neigh").stdout


def test_small_underlay_mtu_gives_a_safe_overlay_mtu(tmp_path: Path) -> None:
    with Testbed(agents=2, underlay=f"198.18.{random.randint(100, 199)}.0/24", mtu=1200) as bed:
        view = make_view(bed)
        agents = [start_agent(bed, k, tmp_path) for k in (1, 2)]
        try:
            results = [agent.on_view(view) for agent in agents]
            assert all(r.ok for r in results)
            assert any("1150" in w for w in results[0].warnings)
            a = agents[0].attach_container("a", bed.add_task("a"), "m-dcos")
            b = agents[1].attach_container("b", bed.add_task("b"), "m-dcos")
            assert a.mtu == 1150
            ping = Cluster(bed, {}, view).ping
            assert ping(bed.task_ns("a"), b.ip, "-M", "do", "-s", str(1150 - 28))     # fits unfragmented
            assert not ping(bed.task_ns("a"), b.ip, "-M", "do", "-s", str(1150 - 27))
        finally:
            for agent in agents:
                agent.netlink.close()


def test_peer_vteps_are_permanent_neighbours_before_the_first_ping(cluster: Cluster) -> None:
    """A task attached now is reachable at once: each agent holds the peer VTEP's MAC as a PERMANENT
    neighbour and its underlay address as a permanent FDB entry before any traffic, so the first
    packet needs no ARP across the overlay and no learning — and none happens."""
    bed = cluster.bed
    cluster.agents[2].attach_container("t", bed.add_task("q2"), "m-dcos")
    target = cluster.agents[3].attach_container("u", bed.add_task("q3"), "m-dcos")
    for here, peer in ((2, 3), (3, 2)):                 # both directions of the ping
        ns = bed.agent_ns(here)
        neigh = bed.run(ns, "ip", "neigh", "show", f"44.128.0.{peer}", "dev", "vtep1024").stdout
        assert f"lladdr 70:b3:d5:80:00:0{peer} PERMANENT" in neigh, (here, neigh)
        fdb = bed.run(ns, "bridge", "fdb", "show", "dev", "vtep1024").stdout
        assert f"70:b3:d5:80:00:0{peer} dst {bed.agent_ip(peer)} self permanent" in fdb, (here, fdb)
    assert cluster.ping(bed.task_ns("q2"), target.ip)
    for here in (2, 3):
        vtep = bed.run(bed.agent_ns(here), "ip", "-4", "neigh", "show", "nud", "all", "dev", "vtep1024").stdout
        assert vtep.strip() and all(line.strip().endswith("PERMANENT") for line in vtep.strip().splitlines()), vtep


def test_on_view_and_attach_from_inside_the_agents_event_loop(cluster: Cluster) -> None:
    """The agent calls these from its asyncio loop; pyroute2's own loop must not collide with it."""
    bed = cluster.bed

    async def as_the_agent_does() -> None:
        result = cluster.agents[2].on_view(make_view(bed, version=5))
        assert result.ok and result.changes == 0
        attached = cluster.agents[2].attach_container("loop", bed.add_task("lp"), "m-dcos")
        assert cluster.ping(bed.task_ns("lp"), attached.gateway)

    asyncio.run(as_the_agent_does())
