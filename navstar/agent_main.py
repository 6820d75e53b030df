"""Composition root of ``navstar agent``: wires the node's components to one asyncio loop.

```
MasterLink ──view──► on_view ──► overlay / minuteman / spartan_dns (as each is available)
    ▲  status                     executor ◄── agent API :5051 ◄── master
    └────────────── executor ─────┘ health checks
local REST 127.0.0.1:62080 · metrics <ip>:61091
```
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cluster.addresses import RESOLVER_ADDRESSES, resolv_conf
from cluster.tasks import TERMINAL_STATES
from cluster.view import ClusterView, OverlayAllocation, TaskPort
from control.agent.api import agent_api
from control.agent.cgroups import Cgroup
from control.agent.executor import Executor, bridge_for
from control.agent.health import CheckTarget, TaskHealth
from control.agent.images import ImageMap
from control.agent.runtime import MasterLink
from control.auth import read_secret
from control.leadership import Leadership, ZkLeaderFollower
from control.protocol import HealthCheckSpec, TaskLaunch
from control.registry import AgentRegistration, AgentResources, PortRange
from control.zk import ZkUrl, is_zk_url
from minuteman import api as vip_api
from minuteman.dataplane import Dataplane
from minuteman.health import HealthConfig
from minuteman.metrics import MinutemanMetrics
from minuteman.reconciler import LoadBalancer
from navstar import logs
from navstar.localnet import add_loopback_addresses
from navstar.servers import Listen, serve
from overlay.agent import OverlayAgent
from overlay.cni import (
    DCOS_DOCKER_NETWORK,
    DCOS_NETWORK,
    DEFAULT_CONFIG_DIR,
    DEFAULT_PLUGIN_DIRS,
    NetworkDirectory,
)
from overlay.cni_exec_kernel import SubprocessExec
from overlay.cni_networks import CniNetworks
from overlay.cni_runner import CniRunner
from overlay.netlink_kernel import PyRoute2Netlink
from spartan_dns import api as dns_api
from spartan_dns.host_resolv import HostResolvConf
from spartan_dns.metrics import DnsMetrics
from spartan_dns.offload import ReplayOffload
from spartan_dns.records import MesosStateError, generate
from spartan_dns.service import DnsService, MesosZones, collector_paused
from spartan_dns.view_state import state_of_view

log = logging.getLogger("navstar.agent")



@dataclass
class AgentOptions:
    master: str
    ip: str
    agent_id: str
    token_file: str | None = None
    api_listen: str = "127.0.0.1:62080"
    agent_listen: str = ":5051"
    metrics_listen: str | None = None      # default <ip>:61091
    work_dir: str = "/var/lib/navstar/agent"
    lb: str = "auto"
    balancing: str = "maglev"               # or "p2c": power of two choices, least connections
    health: HealthConfig = field(default_factory=HealthConfig)
    cpus: float | None = None
    mem: float | None = None
    ports: str = "31000-32000"
    heartbeat_interval: float = 5.0
    cgroup: str = "navstar"
    netns_prefix: str = "navstar-task-"
    node_netns: str | None = None           # this node's named namespace (the lab's), if any
    bpf_pin_dir: str = "/sys/fs/bpf/navstar/agent"
    image_map: str | None = None
    task_user: str | None = "nobody"
    overlay_interval: float = 30.0
    dns_listen: tuple[str, ...] = RESOLVER_ADDRESSES
    dns_port: int = 53
    upstreams: list[str] | None = None          # None: the resolvers in resolv_conf
    resolv_conf: str = "/etc/resolv.conf"
    manage_resolv_conf: bool = False            # a real host: point resolv_conf at us, restore on stop
    lb_cgroup: str | None = None                # v2 cgroup the socket LB serves ("/" on a host); None: cgroup
    forward_zones: dict[str, list[str]] = field(default_factory=dict)
    legacy_vips_listen: str = ":61421"
    attributes: dict[str, str] = field(default_factory=dict)
    role: str = "*"                             # Mesos --default_role: "*" or the role reserving it all
    container_networks: str = "cni"             # "cni" (plugin chains) or "netlink" (the overlay's own veths)
    cni_config_dir: str = str(DEFAULT_CONFIG_DIR)
    cni_plugin_dirs: tuple[str, ...] = tuple(str(p) for p in DEFAULT_PLUGIN_DIRS)
    cni_timeout: float = 10.0                   # seconds a plugin may take before the task fails
    cni_scan_interval: float = 2.0              # seconds between looks at the CNI directory
    dns_kernel_replay: str = "auto"             # on | off | auto: the kernel answers repeated queries on lo


class OverlayNetworks:
    """The executor's container networks, served by the overlay."""

    def __init__(self, overlay: OverlayAgent) -> None:
        self.overlay = overlay

    def attach(self, task_id: str, netns: str, launch: TaskLaunch) -> tuple[list[str], list[TaskPort]]:
        mappings = [(p.host_port or 0, p.container_port or 0, protocol) for p in launch.ports
                    if launch.network == "bridge" and p.container_port for protocol in p.protocols]
        attachment = self.overlay.attach_container(task_id, netns, bridge_for(launch), mappings)
        bound = {(m.container_port, m.protocol): m.host_port for m in attachment.port_mappings}
        ports = [p.model_copy(update={"host_port": bound.get((p.container_port, p.protocols[0]), p.host_port)})
                 if launch.network == "bridge" else p for p in launch.ports]
        return [attachment.ip], ports

    def detach(self, task_id: str) -> None:
        self.overlay.detach_container(task_id)


def cni_network_for(launch: TaskLaunch) -> str:
    """The CNI network a task joins: its named network; the dcos network's Docker twin (d-dcos)
    for Docker containers on dcos and for BRIDGE networking, as DC/OS split them."""
    if launch.network == "bridge":
        return DCOS_DOCKER_NETWORK
    name = launch.network_name or DCOS_NETWORK
    if name == DCOS_NETWORK and bridge_for(launch) == "d-dcos":
        return DCOS_DOCKER_NETWORK
    return name


class CniContainerNetworks:
    """The executor's container networks, attached by CNI plugin chains (``overlay.cni_networks``).
    Host ports of BRIDGE and USER tasks (the master chose them) go to ``portmap``; the task's
    addresses are the plugin's result."""

    def __init__(self, cni: CniNetworks) -> None:
        self.cni = cni

    def attach(self, task_id: str, netns: str, launch: TaskLaunch) -> tuple[list[str], list[TaskPort]]:
        mappings = [(p.host_port, p.container_port, protocol) for p in launch.ports
                    if p.host_port and p.container_port for protocol in p.protocols]
        attachment = self.cni.attach(task_id, netns, cni_network_for(launch), mappings)
        return attachment.ips, launch.ports

    def detach(self, task_id: str) -> None:
        self.cni.detach(task_id)

    def adopt(self, live: dict[str, str]) -> None:
        self.cni.adopt(live)


class NodeAgent:
    def __init__(self, opts: AgentOptions) -> None:
        self.opts = opts
        self.secret = read_secret(opts.token_file)
        self.view: ClusterView | None = None
        port_ranges = parse_port_ranges(opts.ports)
        registration = AgentRegistration(
            agent_id=opts.agent_id, hostname=opts.agent_id, ip=opts.ip,
            resources=AgentResources(
                cpus=opts.cpus if opts.cpus is not None else float(os.cpu_count() or 1),
                mem=opts.mem if opts.mem is not None else float(_memory_mb()),
                ports=[PortRange(begin=begin, end=end) for begin, end in port_ranges]),
            attributes=dict(opts.attributes), role=opts.role,
        )
        self.cni: CniNetworks | None = None
        networks: OverlayNetworks | CniContainerNetworks
        if opts.container_networks == "cni":
            cni_state = Path(opts.work_dir) / "cni"
            self.cni = CniNetworks(NetworkDirectory(opts.cni_config_dir, opts.cni_plugin_dirs),
                                   CniRunner(SubprocessExec(opts.cni_plugin_dirs), timeout=opts.cni_timeout),
                                   state_dir=cni_state / "attachments", data_dir=cni_state / "networks")
            registration.networks = sorted(self.cni.scan().networks)
        else:
            registration.networks = [DCOS_NETWORK]
        self.overlay = OverlayAgent(PyRoute2Netlink(), opts.agent_id, opts.ip,
                                    on_allocation=self._write_dcos if self.cni else None,
                                    state_dir=Path(opts.work_dir) / "overlay",
                                    # Ports the overlay picks itself come from the last range
                                    # (31000-32000 on every lab agent).
                                    host_ports=port_ranges[-1],
                                    reconcile_interval=opts.overlay_interval)
        networks = CniContainerNetworks(self.cni) if self.cni else OverlayNetworks(self.overlay)
        self.executor = Executor(
            Path(opts.work_dir), opts.ip, self._on_status, cgroup_scope=opts.cgroup,
            netns_prefix=opts.netns_prefix, user=opts.task_user, image_map=ImageMap.load(opts.image_map),
            networks=networks, node_netns=opts.node_netns,
            resolv_conf=resolv_conf(),
        )
        # --master zk://…/mesos: the leader comes from ZooKeeper (control/agent/leader.py).
        self.leader_follower = ZkLeaderFollower(ZkUrl.parse(opts.master), self._on_leadership) \
            if is_zk_url(opts.master) else None
        self.link = MasterLink("" if self.leader_follower else opts.master, registration, self.secret, opts.heartbeat_interval,
                               live_statuses=self.executor.statuses)
        self._health: dict[str, asyncio.Task] = {}
        self._background: set[asyncio.Task] = set()
        self._lb_pending: ClusterView | None = None
        self._lb_applied = -1
        self._lb_turn = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self.dataplane: Dataplane | None = None
        self.lb: LoadBalancer | None = None
        self.lb_metrics: MinutemanMetrics | None = None
        self.host_resolv = HostResolvConf(opts.resolv_conf, opts.dns_listen) if opts.manage_resolv_conf else None
        self.dns = DnsService(list(opts.dns_listen), opts.dns_port, upstreams=opts.upstreams,
                              forward_zones=opts.forward_zones or None, node_ip=opts.ip,
                              resolv_conf=str(self.host_resolv.upstream_source() if self.host_resolv
                                              else opts.resolv_conf))
        self._records_version = -1
        self._networks_wake: asyncio.Event | None = None

    # -- events ---------------------------------------------------------------------------
    def _on_status(self, status) -> None:
        """From the executor, on the loop or on a launch worker thread."""
        loop = self._loop
        if loop is not None and threading.get_ident() != self._loop_thread:
            loop.call_soon_threadsafe(self._on_status, status)
            return
        self.link.send_status(status)
        if status.state in TERMINAL_STATES:
            checker = self._health.pop(status.task_id, None)
            if checker is not None:
                checker.cancel()

    def _on_launch(self, launch: TaskLaunch) -> None:
        if not launch.health_checks:
            return
        task_id = launch.task_id

        def target(spec: HealthCheckSpec) -> CheckTarget:
            task = self.executor.tasks.get(task_id)
            port = spec.port
            if port is None and spec.port_index is not None and spec.port_index < len(launch.ports):
                mapping = launch.ports[spec.port_index]
                port = mapping.container_port if launch.network == "container" else mapping.host_port
            host = task.ip_addresses[0] if task and task.ip_addresses and launch.network == "container" else self.opts.ip
            return CheckTarget(host, port, task.netns if task else None, dict(launch.env),
                               as_task=lambda argv: self.executor.run_as_task(task_id, argv))

        health = TaskHealth(launch, target, lambda ok: self.executor.set_health(task_id, ok),
                            lambda why: self._give_up(task_id, why))
        self._health[task_id] = asyncio.get_running_loop().create_task(health.run())

    def _give_up(self, task_id: str, why: str) -> None:
        log.warning("killing task %s: %s", task_id, why)
        # kill() may wait for a launch in progress: not on the loop.
        self._spawn(asyncio.to_thread(self.executor.kill, task_id))

    def on_view(self, view: ClusterView) -> None:
        self.view = view
        log.debug("cluster view %d: %d agents, %d tasks", view.version, len(view.agents), len(view.tasks))
        self._spawn(self._overlay_view(view))
        if self.lb is not None:
            self._lb_pending = view
            self._spawn(self._lb_view())
        self.dns.set_masters(view.master_ip, self._master_ips(view))
        self._spawn(self._refresh_records(view))

    async def _lb_view(self) -> None:
        """Applies the newest view to the VIP dataplane on a worker thread, one at a time and in
        order, then publishes the programmed names (never before) to DNS."""
        async with self._lb_turn:
            view = self._lb_pending
            if view is None or view.version == self._lb_applied:
                return   # the newest view already went through (a reset master may count anew)
            await self.lb.apply_view(view)
            self._lb_applied = view.version
            self.dns.set_vips(self.lb.programmed_names())

    async def _dns_kernel_replay(self) -> ReplayOffload:
        """Own-zone and cached answers repeated from the kernel (bpf/dns_replay.c on the node's
        ``lo``), compiled off the loop (about a second). SystemExit naming the cause if it cannot."""
        from bpf.loader import LoaderError

        try:
            from bpf.dns_replay import KernelDnsReplay

            return await asyncio.to_thread(KernelDnsReplay)
        except (ImportError, LoaderError, OSError) as exc:
            raise SystemExit(f"--dns-kernel-replay on: {exc}") from None

    async def _dns_kernel_replay_if_possible(self) -> None:
        try:
            self.dns.use_offload(await self._dns_kernel_replay())
        except (SystemExit, OSError, ValueError) as exc:
            log.warning("DNS kernel replay unavailable (%s): the resolver answers every query itself", exc)
            return
        log.info("DNS: repeated own-zone and cached answers now come from the kernel on lo")

    async def _refresh_records(self, view: ClusterView) -> None:
        """Mesos-DNS records from the view itself (the agent's one source of cluster data),
        generated off the loop; a view older than the one already served is dropped."""
        masters = [f"{ip}:{view.master_port}" for ip in self._master_ips(view)]

        def build() -> MesosZones:
            with collector_paused():
                records = generate(state_of_view(view), masters=masters, listener=self.opts.ip)
                return self.dns.build_mesos_zones(records)
        try:
            # Off the loop: at 10,000 tasks this is most of a second the resolver keeps answering.
            built = await asyncio.to_thread(build)
        except (MesosStateError, ValueError) as exc:
            log.warning("cluster view %d gave no DNS records: %s", view.version, exc)
            return
        if view.version < self._records_version:
            return
        self._records_version = view.version
        self.dns.install_mesos_zones(built)

    def _master_ips(self, view: ClusterView) -> list[str]:
        """Every master (``master.mesos``): the election's, or the view's one master."""
        if self.leader_follower is not None and self.leader_follower.leadership.masters:
            return sorted({m.ip for m in self.leader_follower.leadership.masters})
        return [view.master_ip]

    def _on_leadership(self, leadership: Leadership) -> None:
        if leadership.leader is not None:
            self.link.leader_changed(leadership.leader.url)
        if self.view is not None and leadership.leader is not None:
            # leader.mesos and master.mesos follow the election at once, before the new view.
            self.dns.set_masters(leadership.leader.ip, self._master_ips(self.view))

    async def _overlay_view(self, view: ClusterView) -> None:
        result = await self.overlay.apply_view(view)
        if result.errors:
            log.warning("overlay: %s", "; ".join(map(str, result.errors)))

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- HTTP -------------------------------------------------------------------------------
    def local_api(self) -> Starlette:
        """``/v1/vips`` (minuteman) and the Mesos-DNS-style ``/v1/version|hosts|services|records``."""
        routes = dns_api.routes(self.dns)
        if self.lb is not None:
            routes += vip_api.vip_routes(self.lb)
        return Starlette(routes=routes)

    @staticmethod
    def metrics_app() -> Starlette:
        async def metrics(_request: Request) -> Response:
            # Collecting reads the dataplane's counters (a map lookup per backend with eBPF):
            # off the loop, which also answers DNS.
            return Response(await asyncio.to_thread(generate_latest), media_type=CONTENT_TYPE_LATEST)

        return Starlette(routes=[Route("/metrics", metrics)])

    async def _start_dataplane(self) -> None:
        self.dataplane = await make_dataplane(self.opts)
        self.lb = LoadBalancer(self.dataplane, node_ip=self.opts.ip, balancing=self.opts.balancing,
                               health=self.opts.health)
        self.lb_metrics = MinutemanMetrics(self.lb, REGISTRY)
        log.info("VIP dataplane: %s", self.dataplane.name)

    def _write_dcos(self, allocation: OverlayAllocation, mtu: int) -> None:
        """From the overlay's pass: the dcos pair; a change is registered with the master at once."""
        if self.cni is not None and self.cni.write_dcos(allocation, mtu):
            wake, loop = self._networks_wake, self._loop
            if wake is not None and loop is not None:
                loop.call_soon_threadsafe(wake.set)

    def _describe_networks(self) -> dict:
        if self.cni is None:
            return {"networks": [{"name": DCOS_NETWORK, "plugins": ["navstar-netlink"]}], "skipped": []}
        return self.cni.scan().describe()

    async def _watch_networks(self) -> None:
        """Networks dropped into (or removed from) the CNI directory reach the master: the agent
        registers again with the new list, so placement sees them."""
        if self.cni is None:
            return
        self._networks_wake = wake = asyncio.Event()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), self.opts.cni_scan_interval)
            wake.clear()
            try:
                names = sorted((await asyncio.to_thread(self.cni.scan)).networks)
            except OSError as exc:
                log.warning("CNI directory %s: %s", self.opts.cni_config_dir, exc)
                continue
            if names != self.link.registration.networks:
                log.info("CNI networks now: %s", ", ".join(names) or "none")
                await self.link.reregister(self.link.registration.model_copy(update={"networks": names}))

    async def run(self) -> None:
        self._loop, self._loop_thread = asyncio.get_running_loop(), threading.get_ident()
        for status in self.executor.adopt():
            self.link.send_status(status)
        # pyroute2's synchronous API refuses to run inside an event loop.
        await add_loopback_addresses(list(self.opts.dns_listen))
        if self.opts.dns_kernel_replay == "on":         # required: the agent does not start without it
            self.dns.use_offload(await self._dns_kernel_replay())
        await self.dns.start()
        if self.host_resolv is not None:
            # Only once the resolver answers: the host's lookups go to it from here on.
            self.host_resolv.install()
        dns_metrics = DnsMetrics(self.dns)
        REGISTRY.register(dns_metrics)
        await self._start_dataplane()
        if self.opts.dns_kernel_replay == "auto":
            # Wanted, not needed: the resolver serves while it builds. Started after the socket LB,
            # whose compile it would otherwise hold up (one compile at a time), and with it the
            # agent's registration: a restart then stays within the master's agent timeout.
            self._spawn(self._dns_kernel_replay_if_possible())
        metrics = Listen.parse(self.opts.metrics_listen or f"{self.opts.ip}:61091")
        try:
            await serve(
                [(self.local_api(), Listen.parse(self.opts.api_listen)),
                 (agent_api(self.opts.agent_id, self.executor, self.secret, self._on_launch,
                            networks=self._describe_networks),
                  Listen.parse(self.opts.agent_listen)),
                 (self.metrics_app(), metrics),
                 (vip_api.legacy_app(self.lb), Listen.parse(self.opts.legacy_vips_listen))],
                background=[*([self.leader_follower.run()] if self.leader_follower else []),
                            self.link.run(), self.link.watch_view(self.on_view), self.executor.run(),
                            self.overlay.run(), self.lb.run(), self._watch_networks()],
            )
        finally:
            # Kernel state stays for a restarted agent to adopt: established flows continue, and with
            # eBPF new VIP connections too (NFQUEUE rejects new ones until the agent is back).
            self.lb.close(keep_kernel_state=True)
            self.lb_metrics.unregister()
            if self.host_resolv is not None:
                self.host_resolv.restore()
            await self.dns.stop()
            REGISTRY.unregister(dns_metrics)


async def make_dataplane(opts: AgentOptions) -> Dataplane:
    """``--lb``: ebpf, nfqueue, or auto (eBPF when this kernel and cgroup allow it)."""
    choice = opts.lb
    if choice in ("ebpf", "auto"):
        from minuteman.ebpf import EbpfDataplane, LoaderError, MapError, ebpf_available

        ok, reason = ebpf_available()
        if ok:
            try:
                socket_lb = await asyncio.to_thread(EbpfDataplane, socket_lb_cgroup(opts), opts.bpf_pin_dir)
            except (LoaderError, MapError) as exc:
                reason = str(exc)
            else:
                # NFQUEUE still serves what the socket LB cannot see: forwarded packets and
                # processes outside the node's cgroup.
                from minuteman.layered import LayeredDataplane

                return LayeredDataplane(socket_lb, await _nfqueue(opts))
        if choice == "ebpf":
            raise SystemExit(f"--lb ebpf: {reason}")
        log.warning("eBPF socket LB unavailable (%s): using NFQUEUE", reason)
    await asyncio.to_thread(_remove_socket_lb, opts)
    return await _nfqueue(opts)


def socket_lb_cgroup(opts: AgentOptions) -> Path:
    """Where the socket LB attaches: the node's cgroup (a lab node, its tasks), or on a real host
    ``--lb-cgroup /``, the v2 root, so every process of the host reaches VIPs in the kernel."""
    return Cgroup(opts.cgroup if opts.lb_cgroup is None else opts.lb_cgroup.strip("/")).unified_path


def _remove_socket_lb(opts: AgentOptions) -> None:
    """An agent without the socket LB takes away one an earlier agent left in its cgroup: left
    attached, it would go on translating VIP connects with a frozen table."""
    try:
        from bpf.loader import teardown

        teardown(socket_lb_cgroup(opts), Path(opts.bpf_pin_dir))
    except ImportError:
        pass       # no BPF tooling here: nothing of ours can be attached either
    except Exception:
        log.exception("removing an earlier socket LB from %s failed", opts.cgroup)


async def _nfqueue(opts: AgentOptions) -> Dataplane:
    from minuteman.nfqueue import NfqueueDataplane

    dataplane = NfqueueDataplane(node_ip=opts.ip, reply_timeout=opts.health.reply_timeout)
    await dataplane.start()
    return dataplane


def run_agent(opts: AgentOptions) -> None:
    logs.configure()
    # pyroute2 forks a helper to open sockets in other namespaces and ends it with SIGTERM.
    # The fork shares asyncio's signal wake-up fd, so unless the helper dies on SIGTERM
    # (default disposition) the signal is delivered to *this* loop and stops the agent.
    import pyroute2.config

    pyroute2.config.disable_mp_signal = True
    if not opts.agent_id:
        opts.agent_id = socket.gethostname()
    agent = NodeAgent(opts)
    log.info("agent %s (%s) → master %s", opts.agent_id, opts.ip, opts.master)
    asyncio.run(agent.run())


def parse_port_ranges(text: str) -> list[tuple[int, int]]:
    """``31000-32000`` or ``1-21,23-5050,5052-32000`` (a single port is ``80``, or ``80-80``):
    ascending, not overlapping, within 1-65535. Raises ValueError saying what is wrong."""
    ranges: list[tuple[int, int]] = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)(?:-(\d+))?\s*", part)
        if not match:
            raise ValueError(f"expected BEGIN-END[,BEGIN-END…], got {text!r}")
        begin, end = int(match[1]), int(match[2] or match[1])
        if not 0 < begin <= end < 65536:
            raise ValueError(f"range {part.strip()!r}: expected 0 < BEGIN <= END < 65536")
        if ranges and begin <= ranges[-1][1]:
            raise ValueError(f"range {part.strip()!r}: ranges must ascend without overlapping")
        ranges.append((begin, end))
    return ranges


def parse_attributes(text: str) -> dict[str, str]:
    """Mesos' ``--attributes``: ``KEY:VALUE;KEY:VALUE`` (``''``: none). Raises ValueError."""
    found: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        key, sep, value = part.partition(":")
        if not sep or not re.fullmatch(r"[A-Za-z0-9_.-]+", key) or not value:
            raise ValueError(f"expected KEY:VALUE[;KEY:VALUE…] (KEY of letters, digits, _ . -), got {part!r}")
        found[key] = value
    return found


def _memory_mb() -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    return 1024
