"""The overlay: time to program 1,000 peers, and TCP throughput across vtep1024.

1. Programming: navstar's reconciler (one netlink dump per object type, then batched writes)
   puts 1,000 peers (4,000 neighbour/FDB/route entries) into a fresh namespace; the peer is
   iproute2 given the same entries as ``ip -batch`` / ``bridge -batch`` files in another fresh
   namespace. Goal: under 1 s.
2. Throughput: iperf3 (or, without it, a Python socket blaster on both sides) from a task on
   agent 1 to a task on agent 2 across the overlay, against agent 1 → agent 2 directly over the
   same plain veth underlay, alternated in the same run. Goal: overlay ≥ 0.6 × underlay.

Everything runs in namespaces of an ``overlay.testbed.Testbed`` (unique names, removed at the
end, processes ended by pid). Run: .venv/bin/python -m bench.overlay
"""

from __future__ import annotations

import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from bench._results import quick, record
from cluster.ipam import OverlayIpam
from cluster.view import AgentInfo, ClusterView
from overlay.agent import OverlayAgent
from overlay.desired import desired_state
from overlay.metrics import OverlayMetrics
from overlay.netfilter_kernel import NftablesNetfilter
from overlay.netlink_kernel import PyRoute2Netlink
from overlay.reconciler import OverlayReconciler
from overlay.testbed import Testbed

PEERS = 1000
SECONDS = 2 if quick() else 4
ROUNDS = 2
PORT = 5201

BLASTER_SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(1)
c, _ = s.accept(); buf = bytearray(1 << 20); view = memoryview(buf)
while c.recv_into(view):
    pass
"""
BLASTER_CLIENT = """
import socket, sys, time
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
chunk = b"x" * (1 << 20); sent = 0; end = time.monotonic() + float(sys.argv[3]); start = time.monotonic()
while time.monotonic() < end:
    c.sendall(chunk); sent += len(chunk)
c.shutdown(socket.SHUT_WR); c.recv(1); print(sent * 8 / (time.monotonic() - start))
"""


# -- 1. programming 1,000 peers ---------------------------------------------------------------------
def synthetic_view(underlay: str) -> ClusterView:
    ipam = OverlayIpam()
    agents = [AgentInfo(agent_id="self", hostname="self", ip=underlay, overlay=ipam.allocate("self"))]
    agents += [AgentInfo(agent_id=f"peer-{i:04d}", hostname=f"peer-{i}", ip=f"198.19.{i // 250}.{i % 250 + 1}",
                         overlay=ipam.allocate(f"peer-{i:04d}")) for i in range(PEERS)]
    return ClusterView(version=1, agents=agents)


def time_navstar(bed: Testbed, underlay: str) -> float:
    ns = bed.add_task("prog-navstar")
    bed.run(ns, "ip", "addr", "add", f"{underlay}/32", "dev", "lo")
    view = synthetic_view(underlay)
    with PyRoute2Netlink(ns) as kernel:
        started = time.perf_counter()
        desired = desired_state(view, "self", underlay, kernel.link_mtu_of(underlay))
        result = OverlayReconciler(kernel, OverlayMetrics.for_registry(CollectorRegistry())).reconcile(desired)
        elapsed = time.perf_counter() - started
    if not result.ok or result.peers != PEERS:
        sys.exit(f"navstar programming failed: {result.errors[:3]}")
    return elapsed


def time_iproute2(bed: Testbed, underlay: str) -> float:
    """The same links, addresses and 4,000 entries, as iproute2 batch files."""
    ns = bed.add_task("prog-iproute2")
    bed.run(ns, "ip", "addr", "add", f"{underlay}/32", "dev", "lo")
    view = synthetic_view(underlay)
    desired = desired_state(view, "self", underlay, 1500)
    ip_lines = [f"link add vtep1024 type vxlan id 1024 dstport 64000 local {underlay} nolearning",
                f"link set vtep1024 address {desired.vtep.mac} mtu {desired.vtep.mtu} up",
                f"addr add {next(iter(desired.vtep.addresses))} dev vtep1024"]
    for bridge in desired.bridges:
        ip_lines += [f"link add {bridge.name} type bridge", f"link set {bridge.name} mtu {bridge.mtu} up",
                     f"addr add {next(iter(bridge.addresses))} dev {bridge.name}"]
    ip_lines += [f"neigh replace {n.ip} lladdr {n.mac} dev vtep1024 nud permanent" for n in desired.neighbours]
    ip_lines += [f"route replace {r.dst} via {r.gateway} dev vtep1024 onlink table {r.table}" for r in desired.routes]
    ip_lines += [f"rule add from {r.src} lookup {r.table} priority {r.priority}" for r in desired.rules]
    fdb_lines = [f"fdb replace {f.mac} dev vtep1024 dst {f.dst} self permanent" for f in desired.fdb]
    with tempfile.TemporaryDirectory() as tmp:
        ip_file, fdb_file = Path(tmp, "ip.batch"), Path(tmp, "fdb.batch")
        ip_file.write_text("\n".join(ip_lines) + "\n")
        fdb_file.write_text("\n".join(fdb_lines) + "\n")
        started = time.perf_counter()
        subprocess.run(["ip", "-n", ns, "-batch", str(ip_file)], check=True, capture_output=True)
        subprocess.run(["bridge", "-n", ns, "-batch", str(fdb_file)], check=True, capture_output=True)
        return time.perf_counter() - started


# -- 2. throughput --------------------------------------------------------------------------------------
def wait_listening(bed: Testbed, ns: str) -> None:
    for _ in range(100):
        if bed.run(ns, "ss", "-Hltn", f"sport = :{PORT}", check=False).stdout.strip():
            return
        time.sleep(0.05)
    sys.exit(f"nothing listens on :{PORT} in {ns}")


def throughput(bed: Testbed, server_ns: str, client_ns: str, address: str) -> float:
    """Bits per second from ``client_ns`` to ``address`` (served in ``server_ns``)."""
    if shutil.which("iperf3"):
        server = bed.spawn(server_ns, "iperf3", "-s", "-1", "-p", str(PORT), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
        wait_listening(bed, server_ns)
        done = bed.run(client_ns, "iperf3", "-c", address, "-p", str(PORT), "-t", str(SECONDS), "-J",
                       check=False, timeout=SECONDS + 20)
        server.wait(timeout=10)
        if done.returncode != 0:
            sys.exit(f"iperf3 {client_ns} → {address} failed: {done.stdout[-500:]} {done.stderr}")
        return json.loads(done.stdout)["end"]["sum_received"]["bits_per_second"]
    server = bed.spawn(server_ns, sys.executable, "-c", BLASTER_SERVER, str(PORT))
    wait_listening(bed, server_ns)
    done = bed.run(client_ns, sys.executable, "-c", BLASTER_CLIENT, address, str(PORT), str(SECONDS),
                   timeout=SECONDS + 20)
    server.wait(timeout=10)
    return float(done.stdout.strip())


def main() -> int:
    underlay = f"198.18.{random.randint(100, 199)}.0/24"
    with Testbed(agents=2, underlay=underlay) as bed, tempfile.TemporaryDirectory() as state:
        program_ns = time_navstar(bed, bed.agent_ip(100))
        program_peer = time_iproute2(bed, bed.agent_ip(101))

        ipam = OverlayIpam()
        view = ClusterView(version=1, agents=[
            AgentInfo(agent_id=f"agent-{k}", hostname=f"agent-{k}", ip=bed.agent_ip(k), overlay=ipam.allocate(f"agent-{k}"))
            for k in (1, 2)])
        agents = [OverlayAgent(PyRoute2Netlink(bed.agent_ns(k)), f"agent-{k}", bed.agent_ip(k),
                               netfilter=NftablesNetfilter(bed.agent_ns(k)), state_dir=Path(state) / str(k),
                               registry=CollectorRegistry()) for k in (1, 2)]
        try:
            for agent in agents:
                agent.on_view(view)
            agents[0].attach_container("client", bed.add_task("client"), "m-dcos")
            server = agents[1].attach_container("server", bed.add_task("server"), "m-dcos")
            overlay, plain = [], []
            for _ in range(ROUNDS):   # alternated, so both see the same machine load
                overlay.append(throughput(bed, bed.task_ns("server"), bed.task_ns("client"), server.ip))
                plain.append(throughput(bed, bed.agent_ns(2), bed.agent_ns(1), bed.agent_ip(2)))
        finally:
            for agent in agents:
                agent.netlink.close()

    tool = "iperf3" if shutil.which("iperf3") else "python socket blaster"
    over, under = statistics.median(overlay), statistics.median(plain)
    print(f"bench.overlay — {PEERS} peers; TCP {SECONDS}s × {ROUNDS} rounds with {tool}")
    print(f"{'what':<52}{'navstar':>14}{'peer':>14}{'navstar speed / peer':>22}")
    print(f"{'program 1,000 peers (s) vs ip/bridge -batch':<52}{program_ns:>14.3f}{program_peer:>14.3f}"
          f"{program_peer / program_ns:>21.2f}×")
    print(f"{'TCP task→task over vtep1024 vs plain veth (Gbit/s)':<52}{over / 1e9:>14.2f}{under / 1e9:>14.2f}"
          f"{over / under:>21.2f}×")
    print(f"goals: programming < 1 s: {'met' if program_ns < 1 else 'MISSED'}; "
          f"overlay ≥ 0.6 × underlay: {'met' if over / under >= 0.6 else 'MISSED'}")
    record("overlay.tcp_bps", over, "bit/s", path="overlay (vtep1024)")
    record("overlay.tcp_bps", under, "bit/s", path="plain veth")
    record("overlay/underlay", over / under, "x", ">= 0.6", over / under >= 0.6)
    record("overlay.program_1k_s", program_ns, "s", "< 1", program_ns < 1)
    record("overlay.program/ip_batch", program_peer / program_ns, "x")
    return 0 if program_ns < 1 and over / under >= 0.6 else 1


if __name__ == "__main__":
    sys.exit(main())
