"""The NFQUEUE dataplane against the real kernel.

Topology (all namespaces made here, removed after): the node (the ``netns`` fixture) routes
between three backend namespaces and a client namespace over veth pairs; the agent
(``python -m minuteman.nfqueue``) runs in the node and serves VIP 11.0.0.1:80 (TCP) and :53 (UDP)
for backends b1..b3, which answer with their own name.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from cluster.view import AgentInfo, ClusterView, TaskInfo, TaskPort
from navstar.namespaces import remove_namespace
from tests.waiting import wait_until

NODE_IP = "10.77.0.1"
VIP = "11.0.0.1"
BACKENDS = {"b1": "10.77.1.2", "b2": "10.77.2.2", "b3": "10.77.3.2"}
CLIENT_IP = "10.77.9.2"
API = "127.0.0.1:62999"

# A backend: TCP port 8080 says its name then echoes lines; UDP port 5353 answers its name.
SERVER = r"""
import asyncio, socket, sys
name = sys.argv[1]
class Udp(asyncio.DatagramProtocol):
    def connection_made(self, t): self.t = t
    def datagram_received(self, data, addr): self.t.sendto(name.encode(), addr)
async def echo(reader, writer):
    writer.write(f"{name}\n".encode())
    while line := await reader.readline():
        writer.write(line)
        await writer.drain()
    writer.close()
async def main():
    server = await asyncio.start_server(echo, "0.0.0.0", 8080)
    await asyncio.get_running_loop().create_datagram_endpoint(Udp, local_addr=("0.0.0.0", 5353))
    print("listening", flush=True)
    async with server:
        await server.serve_forever()
asyncio.run(main())
"""

# A client: "tcp N" → N new connections, counts of who answered (and failures);
# "udp N" → N UDP sockets, one datagram each (plus a second on the first, which must stick).
CLIENT = r"""
import collections, json, socket, sys, time
mode, n, vip = sys.argv[1], int(sys.argv[2]), sys.argv[3]
counts, failures, sticky, ports = collections.Counter(), [], None, set()
for i in range(n):
    try:
        if mode == "tcp":
            with socket.create_connection((vip, 80), timeout=2) as s:
                counts[s.makefile().readline().strip()] += 1
        else:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(2)
                s.connect((vip, 53))
                ports.add(s.getsockname()[1])
                s.send(b"?")
                first = s.recv(100).decode()
                counts[first] += 1
                if i == 0:
                    s.send(b"?")
                    sticky = s.recv(100).decode() == first
    except OSError as exc:
        failures.append(type(exc).__name__)
print(json.dumps({"counts": counts, "failures": failures, "sticky": sticky, "flows": len(ports)}))
"""

# A long-lived connection driven over stdin: prints the backend's name, then echoes each line.
HOLDER = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], 80), timeout=5)
f = s.makefile("rw")
print(f.readline().strip(), flush=True)
for line in sys.stdin:
    f.write(line); f.flush()
    print(f.readline().strip(), flush=True)
"""


class Topology:
    def __init__(self, node, tmp: Path) -> None:
        self.node = node
        self.tmp = tmp
        self.suffix = uuid.uuid4().hex[:6]
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen] = []
        self.agent: subprocess.Popen | None = None
        for name, script in (("server.py", SERVER), ("client.py", CLIENT), ("holder.py", HOLDER)):
            (tmp / name).write_text(script)
        self.view_path = tmp / "view.json"
        self.state_path = tmp / "state.json"

    def ns(self, role: str) -> str:
        return f"{self.node.name}-{role}"

    def build(self) -> None:
        node = self.node.name
        sh(f"ip -n {node} addr add {NODE_IP}/32 dev lo")
        sh(f"ip netns exec {node} sysctl -qw net.ipv4.ip_forward=1")
        for i, (role, ip) in enumerate([*BACKENDS.items(), ("client", CLIENT_IP)]):
            ns, subnet = self.ns(role), ip.rsplit(".", 1)[0]
            sh(f"ip netns add {ns}")
            self.namespaces.append(ns)
            sh(f"ip -n {ns} link set lo up")
            sh(f"ip link add v{i}{self.suffix} netns {node} type veth peer name eth0 netns {ns}")
            sh(f"ip -n {node} addr add {subnet}.1/24 dev v{i}{self.suffix}")
            sh(f"ip -n {node} link set v{i}{self.suffix} up")
            sh(f"ip -n {ns} addr add {ip}/24 dev eth0")
            sh(f"ip -n {ns} link set eth0 up")
            for net in ("10.77.0.0/16", "11.0.0.0/8"):       # no default route: the lab stays sealed
                sh(f"ip -n {ns} route add {net} via {subnet}.1")

    def start_backends(self) -> None:
        for role in BACKENDS:
            self.start_backend(role)

    def start_backend(self, role: str) -> subprocess.Popen:
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns(role), sys.executable, str(self.tmp / "server.py"),
                                 role], stdout=subprocess.PIPE, text=True)
        self.procs.append(proc)
        assert proc.stdout.readline().strip() == "listening"
        return proc

    def write_view(self, roles=tuple(BACKENDS)) -> None:
        tasks = [TaskInfo(task_id=f"web.{role}", app_id="/web", name="web", agent_id="a1", agent_ip=NODE_IP,
                          state="TASK_RUNNING", network="container", ip_addresses=[BACKENDS[role]],
                          ports=[TaskPort(container_port=8080, labels={"VIP_0": "/web:80"}),
                                 TaskPort(container_port=5353, protocol="udp", labels={"VIP_1": "/web:53"})])
                 for role in roles]
        view = ClusterView(version=int(time.time() * 1000), agents=[AgentInfo(agent_id="a1", hostname="n", ip=NODE_IP)],
                           tasks=tasks, vip_addresses={"marathon:/web": VIP})
        self.view_path.write_text(view.model_dump_json())

    def start_agent(self) -> subprocess.Popen:
        self.agent = self.node.popen(
            sys.executable, "-m", "minuteman.nfqueue", "--view", str(self.view_path), "--node-ip", NODE_IP,
            "--state-file", str(self.state_path), "--api", API,
            stdout=subprocess.PIPE, stderr=open(self.tmp / "agent.log", "a"), text=True,
            cwd=str(Path(__file__).resolve().parents[2]))
        line = self.agent.stdout.readline()
        assert line.startswith("ready"), (line, (self.tmp / "agent.log").read_text())
        self._wait_api()
        return self.agent

    def _wait_api(self) -> None:
        wait_until(lambda: self.node.run("curl", "-sf", f"http://{API}/v1/vips", check=False).returncode == 0,
                   message="the agent's API")

    def vips(self) -> list[dict]:
        return json.loads(self.node.run("curl", "-sf", f"http://{API}/v1/vips?detail=true").stdout)

    def connections(self, protocol: str, expect: int | None = None) -> int:
        """New connections the agent counted. Workers report every 0.1 s: with ``expect``, first
        wait until that many are in (the caller compares; where "once" is the point, the tests
        also read the kernel's count of queued packets, which no late report can change)."""
        def total() -> int:
            return sum(b["connections"] for v in self.vips() for b in v["backend"] if v["protocol"] == protocol)
        if expect is not None:
            wait_until(lambda: total() >= expect, message=f"{expect} {protocol} connections counted")
        return total()

    def queued(self) -> list[int]:
        """Packets the kernel handed to the queue workers (the counter of chain nfqueue's one rule)."""
        listing = json.loads(self.node.run("nft", "-j", "list", "chain", "ip", "navstar-minuteman", "nfqueue").stdout)
        return [expr["counter"]["packets"] for item in listing["nftables"]
                for expr in item.get("rule", {}).get("expr", []) if "counter" in expr]

    def kill_agent(self) -> None:
        self.agent.kill()
        self.agent.wait()

    def client(self, where: str, mode: str = "tcp", n: int = 150) -> dict:
        argv = [sys.executable, str(self.tmp / "client.py"), mode, str(n), VIP]
        if where == "node":
            out = self.node.run(*argv, timeout=120).stdout
        else:
            out = sh(f"ip netns exec {self.ns(where)} {' '.join(argv)}").stdout
        return json.loads(out)

    def holder(self, where: str) -> subprocess.Popen:
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns(where), sys.executable, str(self.tmp / "holder.py"), VIP],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.procs.append(proc)
        return proc

    def teardown(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for ns in self.namespaces:
            remove_namespace(ns)
        # the node namespace, its agent and all its kernel state go with the netns fixture


def sh(command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command.split(), check=True, capture_output=True, text=True, timeout=120)


@pytest.fixture
def topo(netns, tmp_path):
    topology = Topology(netns, tmp_path)
    try:
        topology.build()
        topology.start_backends()
        topology.write_view()
        topology.start_agent()
        yield topology
    finally:
        topology.teardown()


def test_balances_local_forwarded_and_hairpin_connections(topo):
    for where in ("node", "client", "b1"):       # OUTPUT, PREROUTING, and a backend calling its own VIP
        result = topo.client(where, "tcp", 150)
        assert result["failures"] == [], (where, result)
        assert set(result["counts"]) == set(BACKENDS), (where, result)
        assert all(n >= 30 for n in result["counts"].values()), (where, result)
    vips = {v["vip"]: v for v in topo.vips()}
    web = vips["web.marathon.l4lb.thisdcos.directory:80"]
    assert web["address"] == VIP and web["programmed"]
    assert topo.connections("tcp", 450) == 450


def test_udp_flows_are_balanced_and_stick(topo):
    result = topo.client("client", "udp", 60)
    assert result["failures"] == [] and result["sticky"] is True, result
    assert set(result["counts"]) == set(BACKENDS), result
    # one queued datagram per flow: the second datagram of the first flow skipped userspace (and
    # so did a socket that got the source port of an earlier one: the same flow for conntrack)
    assert topo.connections("udp", result["flows"]) == result["flows"]


ONE_WAY = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect((sys.argv[1], 53))
s.send(b"?")
print("sent", flush=True)
sys.stdin.readline()          # the test saw the first decided: the rest must not be queued at all
for _ in range(int(sys.argv[2])):
    s.send(b"?")
"""

# Connects once (the kernel retransmits the SYN as it must) and prints the backend's name.
SLOW = r"""
import socket, sys
with socket.create_connection((sys.argv[1], 80), timeout=60) as s:
    print(s.makefile().readline().strip(), flush=True)
"""


def dropped(topo: Topology, role: str) -> int:
    """Packets the backend's own firewall dropped (the DROP rules a test put in its INPUT)."""
    listing = sh(f"ip netns exec {topo.ns(role)} iptables -w -nvx -L INPUT").stdout.splitlines()
    return sum(int(line.split()[0]) for line in listing if " DROP " in f" {line} ")


def test_a_flow_without_replies_goes_to_userspace_once(topo):
    # Conntrack calls a flow NEW until its first reply: a one-way UDP flow must still be decided,
    # and counted, only once.
    for role in BACKENDS:
        sh(f"ip netns exec {topo.ns(role)} iptables -w -A INPUT -p udp --dport 5353 -j DROP")
    (topo.tmp / "one_way.py").write_text(ONE_WAY)
    sender = subprocess.Popen(["ip", "netns", "exec", topo.ns("client"), sys.executable, str(topo.tmp / "one_way.py"),
                               VIP, "20"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    topo.procs.append(sender)
    assert sender.stdout.readline().strip() == "sent"
    wait_until(lambda: sum(dropped(topo, role) for role in BACKENDS) == 1, message="the first datagram decided")
    sender.stdin.write("go\n")
    sender.stdin.close()
    assert sender.wait(timeout=60) == 0
    at = wait_until(lambda: {role: n for role in BACKENDS if (n := dropped(topo, role))}
                    if sum(dropped(topo, role) for role in BACKENDS) == 21 else None,
                    message="all 21 datagrams at the backends")
    assert len(at) == 1, f"one flow, one backend: {at}"
    assert topo.connections("udp", 1) == 1
    flows = topo.node.run("conntrack", "-L", "-p", "udp", "--orig-dst", VIP, check=False).stdout
    assert flows.count("UNREPLIED") == 1, flows
    assert topo.queued() == [1]


def test_a_retransmitted_syn_reaches_the_same_backend_and_is_decided_once(topo):
    # A slow backend: its firewall drops SYNs until the first one has arrived (so it was decided
    # and DNATed), then lets the client's retransmission in. Conntrack still calls the flow NEW (no
    # reply yet); "not DNAT yet" keeps the retransmitted SYN in the kernel, on the NAT it has.
    syn_drop = "INPUT -p tcp --dport 8080 --syn -j DROP"
    for role in BACKENDS:
        sh(f"ip netns exec {topo.ns(role)} iptables -w -A {syn_drop}")
    (topo.tmp / "slow.py").write_text(SLOW)
    queued = topo.queued()
    client = subprocess.Popen(["ip", "netns", "exec", topo.ns("client"), sys.executable, str(topo.tmp / "slow.py"), VIP],
                              stdout=subprocess.PIPE, text=True)
    topo.procs.append(client)
    slow = wait_until(lambda: [role for role in BACKENDS if dropped(topo, role)], message="the first SYN at a backend")
    for role in BACKENDS:
        sh(f"ip netns exec {topo.ns(role)} iptables -w -D {syn_drop}")
    answered, _ = client.communicate(timeout=120)
    assert client.returncode == 0 and slow == [answered.strip()], (slow, answered)
    assert topo.queued() == [queued[0] + 1], "the retransmitted SYN must not be queued again"
    assert topo.connections("tcp", 1) == 1
    flows = topo.node.run("conntrack", "-L", "-p", "tcp", "--orig-dst", VIP, check=False).stdout
    assert len(flows.strip().splitlines()) == 1 and f"src={BACKENDS[slow[0]]}" in flows, flows


def test_agent_down_keeps_flows_rejects_new_ones_and_restart_resumes(topo):
    holder = topo.holder("client")
    backend = holder.stdout.readline().strip()
    assert backend in BACKENDS
    topo.kill_agent()
    holder.stdin.write("still here\n")
    holder.stdin.flush()
    assert holder.stdout.readline().strip() == "still here", "established flow must survive the agent"
    down = topo.client("client", "tcp", 3)
    # refused (a reset at once), not timed out: new VIP connections fail fast while the agent is down
    assert down["failures"] == ["ConnectionRefusedError"] * 3, down
    topo.start_agent()
    log = (topo.tmp / "agent.log").read_text()
    assert "adopted 2 VIPs" in log
    after = topo.client("client", "tcp", 30)
    assert after["failures"] == [] and len(after["counts"]) == 3, after
    holder.stdin.write("and after\n")
    holder.stdin.flush()
    assert holder.stdout.readline().strip() == "and after"


def worker_pids(agent: subprocess.Popen) -> set[int]:
    """The agent's queue workers (children of the agent this test started)."""
    found = subprocess.run(["pgrep", "-P", str(agent.pid), "-f", "minuteman.nfqueue_worker"],
                           capture_output=True, text=True).stdout.split()
    return {int(pid) for pid in found}


def bound_queues(node) -> dict[int, int]:
    """Queue number → netlink port id of its reader, as the node's kernel lists them (a worker binds
    its queue only once it has the table; its port id is its pid)."""
    lines = node.run("cat", "/proc/net/netfilter/nfnetlink_queue").stdout.splitlines()
    return {int(fields[0]): int(fields[1]) for fields in map(str.split, lines)}


def test_a_killed_queue_worker_is_replaced_and_flows_are_balanced_again(topo):
    workers = worker_pids(topo.agent)
    assert len(workers) == min(os.cpu_count() or 1, 8), workers
    queues = bound_queues(topo.node)
    assert set(queues.values()) == workers, queues
    for pid in workers:
        os.kill(pid, signal.SIGKILL)

    def replaced() -> set[int]:
        new = worker_pids(topo.agent) - workers
        return new if len(new) == len(workers) else set()

    new = wait_until(replaced, message="a new worker for each killed one")
    # the new workers have the table and read the same queues
    def rebound() -> bool:
        now = bound_queues(topo.node)
        return set(now) == set(queues) and set(now.values()) == new

    wait_until(rebound, message="the new workers bound to the queues")
    result = topo.client("client", "tcp", 60)
    assert result["failures"] == [] and set(result["counts"]) == set(BACKENDS), result
    assert "starting another" in (topo.tmp / "agent.log").read_text()


def test_killed_backend_is_taken_out_by_passive_health(topo):
    victim = next(p for p in topo.procs if p.args[-1] == "b2")
    victim.kill()
    victim.wait()

    def state_of_b2() -> str:
        web = next(v for v in topo.vips() if v["protocol"] == "tcp")
        return {b["ip"]: b["state"] for b in web["backend"]}[BACKENDS["b2"]]

    def out_of_rotation() -> bool:
        attempts = topo.client("client", "tcp", 10)   # real traffic: refused attempts feed passive health
        return state_of_b2() == "quarantined" and not attempts["failures"]

    wait_until(out_of_rotation, message="b2 quarantined and no longer chosen")
    result = topo.client("client", "tcp", 100)
    assert result["failures"] == [] and set(result["counts"]) == {"b1", "b3"}, result
    assert state_of_b2() == "quarantined"


def test_view_change_reprograms_and_kernel_state_is_a_set_not_rules(topo):
    topo.write_view(roles=("b1", "b3"))
    wait_until(lambda: {b["ip"] for v in topo.vips() for b in v["backend"]} == {BACKENDS["b1"], BACKENDS["b3"]},
               message="the new view's backends")
    assert set(topo.client("node", "tcp", 40)["counts"]) == {"b1", "b3"}
    members = topo.node.run("nft", "list", "set", "ip", "navstar-minuteman", "minuteman").stdout
    assert "11.0.0.1 . tcp . 80" in members and "11.0.0.1 . udp . 53" in members
    table = topo.node.run("nft", "list", "table", "ip", "navstar-minuteman").stdout
    assert table.count("queue num") == 1 and table.count("jump nfqueue") == 2, "one queue rule, none per VIP"
    routes = topo.node.run("ip", "route", "show", "table", "local", "proto", "211").stdout
    assert "local 11.0.0.0/8 dev lo" in routes and f"src {NODE_IP}" in routes
    nat = topo.node.run("nft", "list", "table", "ip", "navstar-minuteman").stdout
    assert nat.count("dnat ip to meta mark") == 2
    # b2 leaves the NAT map once workers can no longer hand out its id (nfqueue.ID_GRACE_SECONDS)
    wait_until(lambda: "10.77.2.2 . 8080" not in topo.node.run("nft", "list", "map", "ip", "navstar-minuteman",
                                                               "backends").stdout,
               message="b2 gone from the NAT map")


def test_flushed_rules_are_put_back_by_drift_repair(topo):
    for chain in ("nfqueue", "queue-prerouting"):          # a firewall reload, say
        topo.node.run("nft", "flush", "chain", "ip", "navstar-minuteman", chain)
    topo.node.run("ip", "route", "del", "local", "11.0.0.0/8", "dev", "lo", "table", "local")
    def repaired() -> bool:                  # the standalone agent repairs every 2 s
        table = topo.node.run("nft", "list", "table", "ip", "navstar-minuteman").stdout
        return table.count("queue num") == 1 and table.count("jump nfqueue") == 2

    wait_until(repaired, message="the queue rules put back")
    result = topo.client("client", "tcp", 30)
    assert result["failures"] == [] and set(result["counts"]) == set(BACKENDS), result
    assert "drifted" in (topo.tmp / "agent.log").read_text()


REMOVE = r"""
from pathlib import Path
import sys
from minuteman.dataplane import Backend, VipEntry, VipKey
from minuteman.maglev import maglev_table
from minuteman.nfqueue import NfqueueDataplane
b = (Backend("10.77.1.2", 8080),)
keys = [VipKey("11.0.0.1", 80, "tcp"), VipKey("192.0.2.9", 53, "udp")]
dp = NfqueueDataplane(node_ip="10.77.0.1", state_path=Path(sys.argv[1]))
result = dp.apply({k: VipEntry(k, b, maglev_table(b)) for k in keys})
assert result.programmed == set(keys) and not result.errors, result
assert dp.apply({k: VipEntry(k, b, maglev_table(b)) for k in keys}).programmed == set(keys)
print(sorted(f"{k.address}:{k.port}/{k.protocol}" for k in dp.current()), flush=True)
dp.close(keep_kernel_state=False)
"""


def test_close_without_keeping_state_removes_everything(netns, tmp_path):
    state = tmp_path / "state.json"
    script = tmp_path / "remove.py"
    script.write_text(REMOVE)
    done = netns.run(sys.executable, str(script), str(state), check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['11.0.0.1:80/tcp', '192.0.2.9:53/udp']"
    assert "navstar" not in netns.run("nft", "list", "ruleset").stdout.lower()
    assert netns.run("ipset", "list", "-n").stdout.strip() == ""
    assert netns.run("ip", "route", "show", "table", "all", "proto", "211").stdout.strip() == ""
    assert not state.exists()


BURST = r"""
import json, select, socket, sys
vip, n = sys.argv[1], int(sys.argv[2])
socks = []
for _ in range(n):                      # n SYNs in flight at once: the agent takes them in batches
    s = socket.socket()
    s.setblocking(False)
    s.connect_ex((vip, 80))
    socks.append(s)
pending, errors, names = set(socks), [], {}
while pending:
    _, writable, _ = select.select([], list(pending), [], 60)
    if not writable:
        break                           # none finished for a minute: reported as unfinished
    for s in writable:
        pending.discard(s)
        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            errors.append(err)
        else:
            s.setblocking(True)
            s.settimeout(5)
            names[s.fileno()] = s.makefile().readline().strip()
print(json.dumps({"errors": errors, "unfinished": len(pending), "names": sorted(set(names.values())),
                  "connected": len(names)}))
"""


def test_a_burst_of_simultaneous_connections_all_connect(topo):
    (topo.tmp / "burst.py").write_text(BURST)
    before = topo.connections("tcp")
    out = json.loads(sh(f"ip netns exec {topo.ns('client')} {sys.executable} {topo.tmp / 'burst.py'} {VIP} 300").stdout)
    assert out["errors"] == [] and out["unfinished"] == 0 and out["connected"] == 300, out
    assert out["names"] == sorted(BACKENDS)
    assert topo.connections("tcp", before + 300) - before == 300


SEAM = r"""
import subprocess
from minuteman.dataplane import Backend
from minuteman.netfilter import Flow
from minuteman.netfilter_kernel import KernelNetfilter
nf = KernelNetfilter("10.77.0.1")
nf.ensure_base(50, 2, cpu_fanout=True)
before = subprocess.run(["nft", "-a", "list", "ruleset"], capture_output=True, text=True).stdout
nf.ensure_base(50, 2, cpu_fanout=True)
after = subprocess.run(["nft", "-a", "list", "ruleset"], capture_output=True, text=True).stdout
assert before == after, "ensure_base writes nothing when all is in place"
a, b = Backend("10.77.1.2", 8080), Backend("10.77.2.2", 53)
nf.update_backend_ids({1: a, 7: b}, ())
assert nf.backend_ids() == {1: a, 7: b}
subprocess.run(["nft", "flush", "chain", "ip", "navstar-minuteman", "dnat-output"], check=True)
nf.ensure_base(50, 2, cpu_fanout=True)
assert nf.backend_ids() == {1: a, 7: b}, "a repaired NAT table keeps its map"
assert "dnat ip to meta mark" in subprocess.run(["nft", "list", "chain", "ip", "navstar-minuteman", "dnat-output"],
                                                 capture_output=True, text=True).stdout
nf.update_backend_ids({}, [1])
assert nf.backend_ids() == {7: b}
assert nf.flow_states([Flow("tcp", "10.77.9.2", 1001, "11.0.0.1", 80)] * 300) == [None] * 300
rules = subprocess.run(["nft", "list", "chain", "ip", "navstar-minuteman", "nfqueue"], capture_output=True, text=True).stdout
assert rules.count("queue num 50-51 bypass,fanout") == 1, rules
subprocess.run(["nft", "flush", "chain", "ip", "navstar-minuteman", "nfqueue"], check=True)
assert not nf.base_intact(50, 2, cpu_fanout=True), "a lost queue rule is drift"
nf.ensure_base(50, 2, cpu_fanout=True)
assert nf.base_intact(50, 2, cpu_fanout=True) and not nf.base_intact(50, 1), "repaired, and exactly as asked"
nf.remove_base()
nf.close()
"""


def test_netfilter_seam_is_idempotent_repairs_and_removes_what_it_made(netns, tmp_path):
    script = tmp_path / "seam.py"
    script.write_text(SEAM)
    done = netns.run(sys.executable, str(script), check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "navstar" not in netns.run("nft", "list", "ruleset").stdout.lower()
