"""The network-namespace lab: one master and N agents on a sealed underlay, on one machine.

Topology (DESIGN.md §5), for a lab named ``lab`` on the default underlay ``198.18.0.0/24``::

    root ns: nv<hash>-op 198.18.0.1 ─┐
    navstar-lab-underlay:   br0 ─────┼──── p-master ──► navstar-lab-master  eth0 198.18.0.2
                                     ├──── p-agent-1 ─► navstar-lab-agent-1 eth0 198.18.0.11
                                     ├──── p-agent-2 ─► navstar-lab-agent-2 eth0 198.18.0.12
                                     └──── p-public-agent-1 ─► navstar-lab-public-agent-1 eth0 198.18.0.31

Public agents (``--public-agents``) register with role ``slave_public`` and attribute
``public_ip:true``, offer DC/OS's public port ranges, and are the only nodes besides the masters'
``:80`` the root namespace reaches: their service ports (``lab_seal``).

Every node namespace gets ``/etc/netns/<ns>/resolv.conf`` (the node's resolver) and its own
cgroup ``navstar/<lab>/<node>``; no namespace gets a default route. What ``up`` creates is written
to the lab's state file *before* it is created, so ``down`` can undo a partial start; ``down`` also
derives every name from the lab name and so works without the state file.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import httpx
from pyroute2 import IPRoute, netns

from cluster.addresses import resolv_conf
from control.agent.cgroups import Cgroup
from control.auth import auth_header
from navstar import frontdoor, lab_masters, lab_seal
from navstar.namespaces import namespace_pids

LAB_ROOT = Path(os.environ.get("NAVSTAR_LAB_ROOT", "/var/lib/navstar/labs"))
NETNS_ETC = Path("/etc/netns")
BPFFS_ROOT = Path("/sys/fs/bpf/navstar")
DEFAULT_UNDERLAY = "198.18.0.0/24"
MARATHON_PORT = 8080
MESOS_PORT = 5050
COSMOS_PORT = 7070       # Cosmos, behind Admin Router's /package/
UNIVERSE_PORT = 8082     # the local Universe's /repo (DC/OS' local-universe port)
PUBLIC_AGENT_BASE = 30              # public-agent-k at .(30+k), as DC/OS labs numbered them
MAX_PUBLIC_AGENTS = 9
PUBLIC_ROLE = "slave_public"
# DC/OS public agents offered every port but ssh (22) and the agent's own (5051) up to 32000:
# marathon-lb binds 80, 443, 9090 and 10000+ on them.
PUBLIC_PORTS = "1-21,23-5050,5052-32000"


class LabError(Exception):
    """A lab operation that cannot go on; the message is for the user."""


@dataclass
class Node:
    name: str
    namespace: str
    ip: str
    pid: int | None = None
    log: str = ""
    zk_pid: int | None = None               # --masters 3|5: the master's ZooKeeper server
    adminrouter_pid: int | None = None      # --masters 3|5: Admin Router on this master
    cosmos_pid: int | None = None           # every master: `navstar cosmos` (packages, the local Universe)

    @property
    def public(self) -> bool:
        """A public agent (role slave_public, reachable from outside on its service ports)."""
        return self.name.startswith("public-agent-")


@dataclass
class LabState:
    name: str
    underlay: str
    agents: int
    lb: str = "auto"
    nodes: list[Node] = field(default_factory=list)
    overlay_interval: float = 30.0          # agents' overlay drift-repair period (s)
    adminrouter_pid: int | None = None      # `navstar adminrouter` (nginx's supervisor) in the master's namespace
    prometheus_pid: int | None = None       # Debian's prometheus in the master's namespace (--prometheus)
    public_agents: int = 0
    masters: int = 1                        # 3 or 5: ZooKeeper and leader election (navstar/lab_masters.py)

    @property
    def master_nodes(self) -> list[Node]:
        return [n for n in self.nodes if lab_masters.is_master_name(n.name)]

    @property
    def directory(self) -> Path:
        return LAB_ROOT / self.name

    @property
    def secret_file(self) -> Path:
        return self.directory / "secret"

    @property
    def master(self) -> Node:
        return self.nodes[0]

    @property
    def front_door(self) -> str:
        """Admin Router on the master (``:80``): the only way in from the root namespace."""
        return f"http://{self.master.ip}"

    @property
    def master_url(self) -> str:
        """The Marathon API, through Admin Router (takes a login token or the cluster secret)."""
        return f"{self.front_door}/service/marathon"

    @property
    def mesos_url(self) -> str:
        """The Mesos API, through Admin Router."""
        return f"{self.front_door}/mesos"

    @property
    def inside_mesos_url(self) -> str:
        """The master's Mesos port as the lab's nodes reach it (sealed from the root namespace)."""
        return f"http://{self.master.ip}:{MESOS_PORT}"

    def secret(self) -> str | None:
        try:
            return self.secret_file.read_text().strip()
        except FileNotFoundError:
            return None

    def node(self, name: str) -> Node | None:
        return next((n for n in self.nodes if n.name == name), None)

    def save(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / "state.json.tmp"
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(self.directory / "state.json")

    @classmethod
    def load(cls, name: str) -> LabState | None:
        path = LAB_ROOT / name / "state.json"
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        # A state file written by an older navstar may hold fields this one no longer has.
        node_fields = {f.name for f in fields(Node)}
        raw["nodes"] = [Node(**{k: v for k, v in n.items() if k in node_fields}) for n in raw.get("nodes", [])]
        return cls(**{k: v for k, v in raw.items() if k in {f.name for f in fields(cls)}})


# -- naming: everything derives from the lab name, so `down` needs no state ------------------
RESERVED_SEGMENTS = ("underlay", "master", "agent", "public")


def check_lab_name(name: str) -> None:
    """Lab names never contain another lab's node names, so ``down`` of one cannot match another's
    namespaces (``lab`` vs ``lab-2``: ``navstar-lab-2-master`` is no node name of ``lab``)."""
    if not re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", name) or len(name) > 20:
        raise LabError(f"lab name {name!r}: use up to 20 lowercase letters and digits, joined by single '-'")
    reserved = set(name.split("-")) & set(RESERVED_SEGMENTS)
    if reserved:
        raise LabError(f"lab name {name!r}: {', '.join(sorted(reserved))} names a node; pick another word")


def owns_namespace(lab: str, namespace: str) -> bool:
    """The lab's own namespaces: underlay, master, agent-N, public-agent-N, and their task
    namespaces (-t…)."""
    return re.fullmatch(rf"navstar-{re.escape(lab)}-(underlay|master(-\d+)?|(public-)?agent-\d+)(-t.+)?",
                        namespace) is not None


def underlay_namespace(lab: str) -> str:
    return f"navstar-{lab}-underlay"


def operator_link(lab: str) -> str:
    return "nv" + hashlib.sha1(lab.encode()).hexdigest()[:8] + "-op"


def cgroup_for(lab: str, node: str | None = None) -> Cgroup:
    return Cgroup(f"navstar/{lab}" + (f"/{node}" if node else ""))


def plan_nodes(lab: str, underlay: ipaddress.IPv4Network, agents: int, public_agents: int = 0,
               masters: int = 1) -> list[Node]:
    base = underlay.network_address
    nodes = [Node(name, f"navstar-{lab}-{name}", str(base + 2 + k))
             for k, name in enumerate(lab_masters.master_names(masters))]
    for k in range(1, agents + 1):
        nodes.append(Node(f"agent-{k}", f"navstar-{lab}-agent-{k}", str(base + 10 + k)))
    for k in range(1, public_agents + 1):
        nodes.append(Node(f"public-agent-{k}", f"navstar-{lab}-public-agent-{k}", str(base + PUBLIC_AGENT_BASE + k)))
    return nodes


# -- process helpers ---------------------------------------------------------------------
def process_alive(pid: int | None) -> bool:
    """True for a live (not zombie) navstar process with this pid."""
    if not pid:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X") and b"navstar" in cmdline


def end_process(pid: int, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds. Only for pids this lab started."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not _exists(pid):
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def end_processes(pids: set[int] | list[int], grace: float = 5.0) -> None:
    """``end_process`` for many at once: SIGTERM to all, one shared grace period, then SIGKILL
    to what is left. Only for pids this lab started."""
    left = set()
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
            left.add(pid)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while left and time.monotonic() < deadline:
        left = {pid for pid in left if _exists(pid)}
        if left:
            time.sleep(0.05)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _exists(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    if state == "Z":
        # Our own child: reap it so the pid goes away.
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        return False
    return True


# -- the lab -----------------------------------------------------------------------------
class Lab:
    def __init__(self, name: str = "lab", progress: Callable[[str], None] | None = None) -> None:
        check_lab_name(name)
        self.name = name
        self.progress = progress or (lambda _msg: None)

    def state(self) -> LabState | None:
        return LabState.load(self.name)

    # ---- status
    def status(self) -> dict:
        state = self.state()
        if state is None:
            return {"name": self.name, "nodes": []}
        return {
            "name": self.name,
            "nodes": [
                {"name": n.name, "namespace": n.namespace, "ip": n.ip, "pid": n.pid,
                 "up": process_alive(n.pid) and Path(f"/run/netns/{n.namespace}").exists(),
                 "log": n.log}
                for n in state.nodes
            ],
        }

    def is_up(self) -> bool:
        return any(n["up"] for n in self.status()["nodes"])

    # ---- up
    def up(self, agents: int = 2, underlay: str = DEFAULT_UNDERLAY, lb: str = "auto",
           timeout: float = 60.0, overlay_interval: float = 30.0, prometheus: bool = False,
           public_agents: int = 0, masters: int = 1) -> LabState:
        if self.is_up():
            raise LabAlreadyUp(f"lab {self.name!r} is already up; `navstar lab down --name {self.name}` first")
        if self.state() is not None or self._leftovers():
            self.progress("removing what an earlier start left behind")
            self.down()
        if agents < 1 or agents > 200:
            raise LabError("--agents must be between 1 and 200")
        if masters not in lab_masters.MASTER_COUNTS:
            raise LabError(f"--masters must be one of {', '.join(map(str, lab_masters.MASTER_COUNTS))}")
        if not 0 <= public_agents <= MAX_PUBLIC_AGENTS:
            raise LabError(f"--public-agents must be between 0 and {MAX_PUBLIC_AGENTS}")
        if public_agents and agents > PUBLIC_AGENT_BASE - 10:
            raise LabError(f"--agents: at most {PUBLIC_AGENT_BASE - 10} with public agents (agent-k is at "
                           f".{{10+k}}, public-agent-k at .{{{PUBLIC_AGENT_BASE}+k}})")
        try:
            net = ipaddress.IPv4Network(underlay)
        except ValueError as exc:
            raise LabError(f"--underlay: {exc}") from None
        if net.num_addresses < 256:
            raise LabError("--underlay needs at least a /24")
        if overlay_interval <= 0:
            raise LabError("--overlay-interval must be positive")
        state = LabState(self.name, str(net), agents, lb, plan_nodes(self.name, net, agents, public_agents, masters),
                         overlay_interval=overlay_interval, public_agents=public_agents, masters=masters)
        state.save()
        try:
            self._build(state, net)
            self._start(state)
            self._wait_registered(state, timeout)
            self.progress("creating user admin")
            frontdoor.create_admin(state)
            if prometheus:
                self._start_prometheus(state, timeout)
        except BaseException:
            self._print_failed_logs(state)
            self.down()
            raise
        return state

    def _build(self, state: LabState, net: ipaddress.IPv4Network) -> None:
        self.progress("creating the underlay")
        state.secret_file.write_text(secrets.token_hex(24) + "\n")
        state.secret_file.chmod(0o600)
        (state.directory / "logs").mkdir(exist_ok=True)
        ul = underlay_namespace(self.name)
        netns.create(ul)
        with IPRoute(netns=ul) as ipr:
            _up(ipr, "lo")
            ipr.link("add", ifname="br0", kind="bridge")
            _up(ipr, "br0")
        op = operator_link(self.name)
        with IPRoute() as root:
            root.link("add", ifname=op, kind="veth", peer={"ifname": "p-operator", "net_ns_fd": ul})
            idx = root.link_lookup(ifname=op)[0]
            root.addr("add", index=idx, address=str(net.network_address + 1), prefixlen=net.prefixlen)
            root.link("set", index=idx, state="up")
        with IPRoute(netns=ul) as ipr:
            _enslave(ipr, "p-operator", "br0")
        for node in state.nodes:
            self.progress(f"creating {node.name}")
            self._build_node(node, ul, net.prefixlen)
            # The outside reaches the masters only on :80, public agents only on their service
            # ports, and no agent's own ports.
            kind = "master" if lab_masters.is_master_name(node.name) else "public" if node.public else "agent"
            lab_seal.seal(node.namespace, str(net.network_address + 1), kind)
            if node.public:
                # Tasks run as nobody; marathon-lb binds :80 and :443 on the public agent.
                _sysctl(node.namespace, "net.ipv4.ip_unprivileged_port_start", "0")

    def _build_node(self, node: Node, ul: str, prefixlen: int) -> None:
        netns.create(node.namespace)
        # Interface names hold 15 characters: public-agent-k's bridge port is p-pub-k.
        port = f"p-{node.name.replace('public-agent-', 'pub-')}"[:15]
        with IPRoute(netns=ul) as ipr:
            ipr.link("add", ifname=port, kind="veth", peer={"ifname": "eth0", "net_ns_fd": node.namespace})
            _enslave(ipr, port, "br0")
        with IPRoute(netns=node.namespace) as ipr:
            _up(ipr, "lo")
            idx = ipr.link_lookup(ifname="eth0")[0]
            ipr.addr("add", index=idx, address=node.ip, prefixlen=prefixlen)
            ipr.link("set", index=idx, state="up")
        etc = NETNS_ETC / node.namespace
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text(resolv_conf())
        cgroup_for(self.name, node.name).create()

    def _start(self, state: LabState) -> None:
        if state.masters > 1:
            self._start_zookeepers(state)
        for node in state.nodes:
            self.progress(f"starting {node.name}")
            self._start_node(state, node)
            if state.masters > 1 and lab_masters.is_master_name(node.name):
                self._start_master_adminrouter(state, node)
            if node is state.master:
                self.progress("starting Admin Router")
                self._start_adminrouter(state)
            if lab_masters.is_master_name(node.name):
                self.progress(f"starting Cosmos on {node.name}")
                self._start_cosmos(state, node)

    def _start_zookeepers(self, state: LabState, timeout: float = 60.0) -> None:
        """One ZooKeeper server per master, in its namespace; returns once they have a quorum."""
        for node in state.master_nodes:
            self.start_zookeeper(state, node)
        self.progress("waiting for a ZooKeeper quorum")
        try:
            lab_masters.wait_quorum(state.master_nodes, timeout)
        except TimeoutError as exc:
            raise LabError(f"{exc}; see {state.directory / 'logs'}") from None

    def start_zookeeper(self, state: LabState, node: Node) -> None:
        self.progress(f"starting ZooKeeper on {node.name}")
        argv = lab_masters.zookeeper_argv(state.master_nodes, node, state.directory / "zookeeper" / node.name)
        node.zk_pid = self._spawn(node, argv, str(state.directory / "logs" / f"zookeeper-{node.name}.log"),
                                  leaf="zookeeper")
        state.save()

    def _start_master_adminrouter(self, state: LabState, node: Node) -> None:
        log = str(state.directory / "logs" / f"adminrouter-{node.name}.log")
        argv = lab_masters.adminrouter_args(state.master_nodes, node, state.secret_file,
                                            state.directory / f"adminrouter-{node.name}")
        node.adminrouter_pid = self._spawn(node, [sys.executable, "-m", "navstar", *argv], log, leaf="adminrouter")
        state.save()

    def _start_adminrouter(self, state: LabState) -> None:
        log = str(state.directory / "logs" / "adminrouter.log")
        if state.masters > 1:
            return      # every master has its own (_start_master_adminrouter)
        state.adminrouter_pid = self._spawn(state.master, [sys.executable, "-m", "navstar",
                                                           *frontdoor.adminrouter_args(state)], log)
        state.save()

    def _start_cosmos(self, state: LabState, node: Node) -> None:
        """Cosmos behind this master's Admin Router (127.0.0.1:7070), installing through its Marathon
        port (a follower's forwards to the leader); the local Universe served at ``<its ip>:8082/repo``,
        its default repository. Each master keeps its own repository list."""
        log = str(state.directory / "logs" / f"cosmos-{node.name}.log")
        node.cosmos_pid = self._spawn(node, [
            sys.executable, "-m", "navstar", "cosmos", "--listen", f"127.0.0.1:{COSMOS_PORT}",
            "--universe-listen", f"{node.ip}:{UNIVERSE_PORT}", "--marathon", f"http://127.0.0.1:{MARATHON_PORT}",
            "--token-file", str(state.secret_file), "--state-dir", str(state.directory / "cosmos" / node.name)],
            log, leaf="cosmos")
        state.save()

    def _start_node(self, state: LabState, node: Node) -> None:
        node.log = str(state.directory / "logs" / f"{node.name}.log")
        node.pid = self._spawn(node, [sys.executable, "-m", "navstar", *self._node_args(state, node)], node.log)
        state.save()

    def _node_args(self, state: LabState, node: Node) -> list[str]:
        secret = str(state.secret_file)
        if state.masters > 1 and lab_masters.is_master_name(node.name):
            return lab_masters.master_args(state.master_nodes, node, secret)
        if node is state.master:
            return ["master", "--marathon-listen", f":{MARATHON_PORT}", "--mesos-listen", f":{MESOS_PORT}",
                    "--state-dir", str(state.directory / "master"), "--token-file", secret,
                    "--agent-timeout", "5"]
        master = state.inside_mesos_url if state.masters == 1 else lab_masters.zk_url(state.master_nodes)
        return ["agent", "--master", master, "--ip", node.ip, "--agent-id", node.name,
                "--token-file", secret, "--lb", state.lb, "--heartbeat-interval", "1",
                "--work-dir", str(state.directory / node.name),
                "--cgroup", cgroup_for(self.name, node.name).relpath,
                "--netns-prefix", f"{node.namespace}-t", "--node-netns", node.namespace,
                # The sealed lab has no upstream: its resolv.conf names only the node resolver.
                "--resolv-conf", str(NETNS_ETC / node.namespace / "resolv.conf"),
                "--bpf-pin-dir", str(BPFFS_ROOT / self.name / node.name),
                # Each node its own CNI directory (the machine's /etc/navstar/cni is not the lab's).
                "--cni-config-dir", str(state.directory / node.name / "cni-config"),
                "--overlay-interval", f"{state.overlay_interval:g}",
                *(["--default-role", PUBLIC_ROLE, "--attributes", "public_ip:true", "--ports", PUBLIC_PORTS]
                  if node.public else [])]

    def restart(self, node_name: str, timeout: float = 60.0) -> Node:
        """Stops the node's process if it still runs (SIGTERM, then SIGKILL) and starts it again
        with the same arguments; its tasks and kernel state are left for it to adopt."""
        state, node = self._node(node_name)
        if process_alive(node.pid):
            end_process(node.pid)
        started = time.time()
        self._start_node(state, node)
        self._wait_ready(state, node, timeout, since=started)
        return node

    def _wait_ready(self, state: LabState, node: Node, timeout: float, since: float = 0.0) -> None:
        """The master answers ``/ping``; an agent is registered and reachable, and has been heard
        from ``since`` (the master keeps a killed agent reachable for its agent timeout)."""
        is_master = lab_masters.is_master_name(node.name)
        url = f"{state.master_url}/ping" if is_master else f"{state.mesos_url}/v1/agents"

        def ready(resp: httpx.Response) -> bool:
            if resp.status_code != 200:
                return False
            return is_master or any(a["agent_id"] == node.name and a["reachable"] and a["last_seen"] >= since
                                    for a in resp.json()["agents"])

        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0, headers=auth_header(state.secret())) as client:
            while time.monotonic() < deadline:
                if not process_alive(node.pid):
                    raise LabError(f"{node.name} exited during start-up; see {node.log}")
                try:
                    if ready(client.get(url)):
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
        raise LabError(f"{node.name} was not ready within {timeout:.0f}s; see {node.log}")

    def _spawn(self, node: Node, argv: list[str], log_path: str, leaf: str = "agent") -> int:
        # A leaf of its own: on a pure v2 host a group with processes cannot also hold
        # the task groups that carry CPU and memory limits.
        cgroup = Cgroup(f"{cgroup_for(self.name, node.name).relpath}/{leaf}")
        cgroup.create()
        with open(log_path, "ab") as log:
            # nsenter, not `ip netns exec`: the latter remounts /sys, which would hide the
            # cgroup and bpffs mounts the agent needs.
            proc = subprocess.Popen(
                ["nsenter", f"--net=/run/netns/{node.namespace}", "--", *argv],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=lambda: cgroup.add_pid(os.getpid()),
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        return proc.pid

    def _wait_registered(self, state: LabState, timeout: float) -> None:
        want = {n.name for n in state.nodes if not lab_masters.is_master_name(n.name)}
        headers = auth_header(state.secret())
        deadline = time.monotonic() + timeout
        self.progress(f"waiting for {len(want)} agents to register")
        with httpx.Client(timeout=2.0, headers=headers) as client:
            while time.monotonic() < deadline:
                for node in state.nodes:
                    if not process_alive(node.pid):
                        raise LabError(f"{node.name} exited during start-up; see {node.log}")
                try:
                    resp = client.get(f"{state.mesos_url}/v1/agents")
                    if resp.status_code == 200:
                        have = {a["agent_id"] for a in resp.json()["agents"] if a["reachable"]}
                        if want <= have:
                            return
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
        raise LabError(f"agents did not register within {timeout:.0f}s; see {state.directory / 'logs'}")

    def _start_prometheus(self, state: LabState, timeout: float) -> None:
        """Debian's prometheus in the master's namespace and cgroup, scraping every node; its
        configuration and rules (deploy/prometheus) are rendered under the lab's directory and
        must pass promtool first. Short intervals and ``for:`` so alerts fire within seconds."""
        from navstar import prometheus

        self.progress("starting prometheus")
        home = state.directory / "prometheus"
        config = prometheus.render(
            home, masters=[n.ip for n in state.master_nodes],
            agents=[n.ip for n in state.nodes if not lab_masters.is_master_name(n.name)],
            secret_file=state.secret_file, cluster=self.name, scrape_interval="1s",
            evaluation_interval="1s", alert_for="3s")
        try:
            prometheus.check(config)
        except prometheus.PrometheusError as exc:
            raise LabError(f"prometheus not started: {exc}") from None
        log = str(state.directory / "logs" / "prometheus.log")
        ready = ["nsenter", f"--net=/run/netns/{state.master.namespace}", "--",
                 "curl", "-sf", "-o", "/dev/null", f"http://127.0.0.1:{prometheus.PORT}/-/ready"]
        # One more start if the first exits during start-up (seen once in a loaded CI run, cause
        # not captured): the log's tail goes into our log, and into the error if it fails again.
        for attempt in (1, 2):
            state.prometheus_pid = self._spawn(state.master, prometheus.server_argv(config, home / "data"), log,
                                               leaf="prometheus")
            state.save()
            deadline = time.monotonic() + timeout
            while subprocess.run(ready, capture_output=True).returncode != 0:
                if not process_alive(state.prometheus_pid):
                    tail = " | ".join(Path(log).read_text(errors="replace").splitlines()[-5:]) \
                        if Path(log).exists() else "(no log)"
                    if attempt == 1:
                        self.progress(f"prometheus exited during start-up ({tail}); starting it again")
                        break
                    raise LabError(f"prometheus exited during start-up: {tail}; see {log}")
                if time.monotonic() > deadline:
                    raise LabError(f"prometheus was not ready within {timeout:.0f}s; see {log}")
                time.sleep(0.2)
            else:
                return

    def _print_failed_logs(self, state: LabState) -> None:
        for node in state.nodes:
            if node.log and Path(node.log).exists() and not process_alive(node.pid):
                tail = Path(node.log).read_text(errors="replace").splitlines()[-15:]
                print(f"--- last lines of {node.log}", *tail, sep="\n", file=sys.stderr)

    def _node(self, node_name: str) -> tuple[LabState, Node]:
        """The lab's state and one of its nodes; raises LabError / UnknownNode (naming the nodes)."""
        state = self.state()
        if state is None:
            raise LabError(f"lab {self.name!r} is not up")
        node = state.node(node_name)
        if node is None:
            names = ", ".join(n.name for n in state.nodes)
            raise UnknownNode(f"no node {node_name!r} in lab {self.name!r}; nodes: {names}")
        return state, node

    # ---- exec / logs
    def exec_argv(self, node_name: str, command: list[str]) -> tuple[Node, list[str]]:
        _state, node = self._node(node_name)
        return node, ["ip", "netns", "exec", node.namespace, *command]

    def exec(self, node_name: str, command: list[str]) -> None:
        """Replaces this process by ``command`` inside the node's namespace and cgroup."""
        node, argv = self.exec_argv(node_name, command)
        cgroup = Cgroup(f"{cgroup_for(self.name, node.name).relpath}/exec")
        cgroup.create()
        cgroup.add_pid(os.getpid())
        os.execvp(argv[0], argv)

    # ---- down
    def _leftovers(self) -> list[str]:
        return [ns for ns in netns.listnetns() if owns_namespace(self.name, ns)]

    def down(self) -> list[str]:
        """Removes everything the lab made; safe to repeat. Returns what it removed."""
        removed: list[str] = []
        state = self.state()
        namespaces = set(self._leftovers())
        if state is not None:
            namespaces |= {n.namespace for n in state.nodes}
            if state.adminrouter_pid is not None and process_alive(state.adminrouter_pid):
                end_process(state.adminrouter_pid)     # stops nginx gracefully
                removed.append(f"process {state.adminrouter_pid} (adminrouter)")
            for node in state.nodes:
                if node.cosmos_pid is not None and process_alive(node.cosmos_pid):
                    end_process(node.cosmos_pid)
                    removed.append(f"process {node.cosmos_pid} (cosmos on {node.name})")
            alive = [node for node in state.nodes if node.pid is not None and process_alive(node.pid)]
            end_processes({node.pid for node in alive if node.pid is not None})
            removed += [f"process {node.pid} ({node.name})" for node in alive]
        # Whatever else runs in the lab's namespaces or cgroups was started by the lab
        # (tasks, `lab exec`): end it too, all at once (a thousand tasks in one grace period).
        lab_cgroup = cgroup_for(self.name)
        for _ in range(3):
            strays = set(lab_cgroup.pids())
            for ns in namespaces:
                strays |= set(namespace_pids(ns))
            strays.discard(os.getpid())
            if not strays:
                break
            end_processes(strays, grace=2.0)
            removed += [f"process {pid}" for pid in sorted(strays)]
        pins = BPFFS_ROOT / self.name
        if pins.exists():
            shutil.rmtree(pins, ignore_errors=True)
            removed.append(f"bpf pins {pins}")
        with contextlib.suppress(OSError):
            BPFFS_ROOT.rmdir()   # shared by every lab: goes with the last one
        with IPRoute() as root:
            idx = root.link_lookup(ifname=operator_link(self.name))
            if idx:
                root.link("del", index=idx[0])
                removed.append(f"link {operator_link(self.name)}")
        for ns in sorted(namespaces):
            try:
                netns.remove(ns)
                removed.append(f"netns {ns}")
            except FileNotFoundError:
                pass
            etc = NETNS_ETC / ns
            if etc.exists():
                shutil.rmtree(etc)
                removed.append(f"{etc}")
        failures: list[str] = []
        if lab_cgroup.exists() or any(p.exists() for p in lab_cgroup.paths()):
            try:
                lab_cgroup.remove()
                removed.append(f"cgroup {lab_cgroup.relpath}")
            except OSError as exc:   # keep going: everything else still goes
                failures.append(f"cgroup {lab_cgroup.relpath}: {exc}")
        for parent in Cgroup("navstar").paths():
            # Shared by every lab: goes only when the last lab has gone.
            with contextlib.suppress(OSError):
                parent.rmdir()
        lab_dir = LAB_ROOT / self.name
        if lab_dir.exists():
            shutil.rmtree(lab_dir)
            removed.append(str(lab_dir))
        if failures:
            raise LabError("could not remove " + "; ".join(failures) + " (run `navstar lab down` again)")
        return removed


class LabAlreadyUp(LabError):
    pass


class UnknownNode(LabError):
    pass


def _sysctl(namespace: str, key: str, value: str) -> None:
    """A per-namespace sysctl, written from inside the namespace."""
    subprocess.run(["ip", "netns", "exec", namespace, "sysctl", "-q", "-w", f"{key}={value}"], check=True,
                   capture_output=True)


def _up(ipr: IPRoute, ifname: str) -> None:
    ipr.link("set", index=ipr.link_lookup(ifname=ifname)[0], state="up")


def _enslave(ipr: IPRoute, ifname: str, bridge: str) -> None:
    idx = ipr.link_lookup(ifname=ifname)[0]
    ipr.link("set", index=idx, master=ipr.link_lookup(ifname=bridge)[0])
    ipr.link("set", index=idx, state="up")
