"""1,000 synthetic peers programmed into one namespace by the real reconciler.

How long it takes is ``bench.overlay``'s to measure (against iproute2 as a peer, with its goal);
what is asserted here is that the kernel holds exactly what a user would check with ``ip``.
"""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry

from cluster.ipam import OverlayIpam
from cluster.view import AgentInfo, ClusterView, OverlayConfig
from overlay.desired import desired_state
from overlay.metrics import OverlayMetrics
from overlay.netlink_kernel import PyRoute2Netlink
from overlay.reconciler import OverlayReconciler

PEERS = 1000


def synthetic_view(peers: int, underlay_base: str) -> ClusterView:
    """Agent 0 is us; peers have underlay addresses from 198.19.0.0/16 (never routed anywhere)."""
    ipam = OverlayIpam(OverlayConfig())
    agents = [AgentInfo(agent_id="self", hostname="self", ip=underlay_base, overlay=ipam.allocate("self"))]
    for i in range(peers):
        agents.append(AgentInfo(agent_id=f"peer-{i:04d}", hostname=f"peer-{i}",
                                ip=f"198.19.{i // 250}.{i % 250 + 1}", overlay=ipam.allocate(f"peer-{i:04d}")))
    return ClusterView(version=1, agents=agents)


def test_thousand_peers_programmed_adopted_and_trimmed(netns) -> None:
    underlay = f"198.18.{random.randint(100, 199)}.11"
    netns.run("ip", "addr", "add", f"{underlay}/32", "dev", "lo")
    view = synthetic_view(PEERS, underlay)
    metrics = OverlayMetrics.for_registry(CollectorRegistry())
    with PyRoute2Netlink(netns.name) as kernel:
        desired = desired_state(view, "self", underlay, kernel.link_mtu_of(underlay))
        result = OverlayReconciler(kernel, metrics).reconcile(desired)
        assert result.ok and result.peers == PEERS, result.errors[:3]

        assert len(netns.run("ip", "neigh", "show", "dev", "vtep1024", "nud", "permanent").stdout.splitlines()) == PEERS
        assert len(netns.run("bridge", "fdb", "show", "dev", "vtep1024").stdout.splitlines()) == PEERS
        main = netns.run("ip", "route", "show", "dev", "vtep1024").stdout.splitlines()
        assert len([r for r in main if r.startswith("9.")]) == PEERS
        assert len(netns.run("ip", "route", "show", "table", "42").stdout.splitlines()) == PEERS

        # A new reconciler (a restarted agent) adopts all of it: not one change.
        again = OverlayReconciler(kernel, metrics).reconcile(desired)
        assert again.ok and again.changes == 0

        # Half the peers leave.
        view.agents = view.agents[: PEERS // 2 + 1]
        trimmed = OverlayReconciler(kernel, metrics).reconcile(
            desired_state(view, "self", underlay, kernel.link_mtu_of(underlay)))
        assert trimmed.ok and trimmed.peers == PEERS // 2
        assert len(netns.run("ip", "route", "show", "table", "42").stdout.splitlines()) == PEERS // 2
        assert len(netns.run("bridge", "fdb", "show", "dev", "vtep1024").stdout.splitlines()) == PEERS // 2
