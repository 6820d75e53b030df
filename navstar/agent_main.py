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
import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from control.agent.api import agent_api
from control.agent.executor import Executor, bridge_for
from control.agent.health import CheckTarget, TaskHealth
from control.agent.images import ImageMap
from control.agent.runtime import MasterLink
from control.auth import read_secret
from control.protocol import HealthCheckSpec, TaskLaunch
from control.registry import AgentRegistration, AgentResources, PortRange
from control.view import ClusterView, TaskPort
from navstar import __version__, logs
from navstar.servers import Listen, serve
from overlay.agent import OverlayAgent
from overlay.netlink import PyRoute2Netlink

log = logging.getLogger("navstar.agent")

RESOLVERS = ("198.51.100.1", "198.51.100.2", "198.51.100.3")


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
    cpus: float | None = None
    mem: float | None = None
    ports: str = "31000-32000"
    heartbeat_interval: float = 5.0
    cgroup: str = "navstar"
    netns_prefix: str = "navstar-task-"
    bpf_pin_dir: str = "/sys/fs/bpf/navstar/agent"
    image_map: str | None = None
    task_user: str | None = "nobody"
    overlay_interval: float = 30.0
    attributes: dict[str, str] = field(default_factory=dict)


class OverlayNetworks:
    """The executor's container networks, served by the overlay."""

    def __init__(self, overlay: OverlayAgent) -> None:
        self.overlay = overlay

    def attach(self, task_id: str, netns: str, launch: TaskLaunch) -> tuple[list[str], list[TaskPort]]:
        mappings = [(p.host_port or 0, p.container_port or 0, p.protocol) for p in launch.ports
                    if launch.network == "bridge" and p.container_port]
        attachment = self.overlay.attach_container(task_id, netns, bridge_for(launch), mappings)
        bound = {(m.container_port, m.protocol): m.host_port for m in attachment.port_mappings}
        ports = [p.model_copy(update={"host_port": bound.get((p.container_port, p.protocol), p.host_port)})
                 if launch.network == "bridge" else p for p in launch.ports]
        return [attachment.ip], ports

    def detach(self, task_id: str) -> None:
        self.overlay.detach_container(task_id)


class NodeAgent:
    def __init__(self, opts: AgentOptions) -> None:
        self.opts = opts
        self.secret = read_secret(opts.token_file)
        self.view: ClusterView | None = None
        begin, _, end = opts.ports.partition("-")
        registration = AgentRegistration(
            agent_id=opts.agent_id, hostname=opts.agent_id, ip=opts.ip,
            resources=AgentResources(
                cpus=opts.cpus if opts.cpus is not None else float(os.cpu_count() or 1),
                mem=opts.mem if opts.mem is not None else float(_memory_mb()),
                ports=[PortRange(begin=int(begin), end=int(end or begin))]),
            attributes=opts.attributes,
        )
        self.overlay = OverlayAgent(PyRoute2Netlink(), opts.agent_id, opts.ip,
                                    state_dir=Path(opts.work_dir) / "overlay",
                                    host_ports=(int(begin), int(end or begin)),
                                    reconcile_interval=opts.overlay_interval)
        self.executor = Executor(
            Path(opts.work_dir), opts.ip, self._on_status, cgroup_scope=opts.cgroup,
            netns_prefix=opts.netns_prefix, user=opts.task_user, image_map=ImageMap.load(opts.image_map),
            networks=OverlayNetworks(self.overlay),
            resolv_conf="".join(f"nameserver {a}\n" for a in RESOLVERS) + "options timeout:1 attempts:2\n",
        )
        self.link = MasterLink(opts.master, registration, self.secret, opts.heartbeat_interval,
                               live_statuses=self.executor.statuses)
        self._health: dict[str, asyncio.Task] = {}
        self._background: set[asyncio.Task] = set()

    # -- events ---------------------------------------------------------------------------
    def _on_status(self, status) -> None:
        self.link.send_status(status)
        if status.state in ("TASK_FINISHED", "TASK_FAILED", "TASK_KILLED", "TASK_LOST", "TASK_ERROR"):
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
            return CheckTarget(host, port, task.netns if task else None, dict(launch.env))

        health = TaskHealth(launch, target, lambda ok: self.executor.set_health(task_id, ok),
                            lambda why: self._give_up(task_id, why))
        self._health[task_id] = asyncio.get_running_loop().create_task(health.run())

    def _give_up(self, task_id: str, why: str) -> None:
        log.warning("killing task %s: %s", task_id, why)
        self.executor.kill(task_id)

    def on_view(self, view: ClusterView) -> None:
        self.view = view
        log.debug("cluster view %d: %d agents, %d tasks", view.version, len(view.agents), len(view.tasks))
        self._spawn(self._overlay_view(view))

    async def _overlay_view(self, view: ClusterView) -> None:
        # pyroute2 is synchronous: keep it off the loop.
        result = await asyncio.to_thread(self.overlay.on_view, view)
        if result.errors:
            log.warning("overlay: %s", "; ".join(map(str, result.errors)))

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- HTTP -------------------------------------------------------------------------------
    def local_api(self) -> Starlette:
        async def version(_request: Request) -> JSONResponse:
            return JSONResponse({"Service": "navstar", "Version": __version__})

        return Starlette(routes=[Route("/v1/version", version)])

    @staticmethod
    def metrics_app() -> Starlette:
        async def metrics(_request: Request) -> Response:
            return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

        return Starlette(routes=[Route("/metrics", metrics)])

    async def run(self) -> None:
        for status in self.executor.adopt():
            self.link.send_status(status)
        metrics = Listen.parse(self.opts.metrics_listen or f"{self.opts.ip}:61091")
        await serve(
            [(self.local_api(), Listen.parse(self.opts.api_listen)),
             (agent_api(self.opts.agent_id, self.executor, self.secret, self._on_launch),
              Listen.parse(self.opts.agent_listen)),
             (self.metrics_app(), metrics)],
            background=[self.link.run(), self.link.watch_view(self.on_view), self.executor.run(),
                        self.overlay.run()],
        )


def run_agent(opts: AgentOptions) -> None:
    logs.configure()
    if not opts.agent_id:
        opts.agent_id = socket.gethostname()
    agent = NodeAgent(opts)
    log.info("agent %s (%s) → master %s", opts.agent_id, opts.ip, opts.master)
    asyncio.run(agent.run())


def _memory_mb() -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    return 1024
