"""Composition root of ``navstar agent``."""

from __future__ import annotations

import asyncio
import logging
import os
import socket

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from control.agent.runtime import MasterLink
from control.auth import read_secret
from control.registry import AgentRegistration, AgentResources, PortRange
from navstar import __version__, logs
from navstar.servers import Listen, serve

log = logging.getLogger("navstar.agent")


def local_api() -> Starlette:
    async def version(_request: Request) -> JSONResponse:
        return JSONResponse({"Service": "navstar", "Version": __version__})

    return Starlette(routes=[Route("/v1/version", version)])


def run_agent(master: str, ip: str, agent_id: str | None, token_file: str | None,
              api_listen: str, cpus: float | None, mem: float | None, ports: str,
              heartbeat_interval: float) -> None:
    logs.configure()
    begin, _, end = ports.partition("-")
    registration = AgentRegistration(
        agent_id=agent_id or socket.gethostname(),
        hostname=agent_id or socket.gethostname(),
        ip=ip,
        resources=AgentResources(
            cpus=cpus if cpus is not None else float(os.cpu_count() or 1),
            mem=mem if mem is not None else float(_memory_mb()),
            ports=[PortRange(begin=int(begin), end=int(end or begin))],
        ),
    )
    link = MasterLink(master, registration, read_secret(token_file), heartbeat_interval)
    log.info("agent %s (%s) → master %s", registration.agent_id, ip, master)
    asyncio.run(serve([(local_api(), Listen.parse(api_listen))], background=[link.run()]))


def _memory_mb() -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    return 1024
