"""The master: agent registry behind the Mesos-port API, ``/ping`` on the Marathon port.

Two Starlette apps, served by the composition root (``navstar master``):
``mesos_app`` (default :5050: agent registration and heartbeats) and ``marathon_app``
(default :8080). Later work adds the allocator, the Marathon API and the cluster view here.
"""

from __future__ import annotations

import asyncio
import logging

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from control.auth import authorized
from control.registry import AgentRegistration, AgentRegistry

log = logging.getLogger("navstar.master")


class Master:
    def __init__(self, secret: str | None = None, agent_timeout: float = 75.0) -> None:
        self.secret = secret
        self.agent_timeout = agent_timeout
        self.registry = AgentRegistry()

    # -- Mesos port ---------------------------------------------------------------------
    async def _register(self, request: Request) -> JSONResponse:
        if not authorized(request, self.secret):
            log.warning("rejected registration from %s: bad cluster secret", request.client)
            return JSONResponse({"message": "invalid cluster secret"}, status_code=401)
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"message": "malformed JSON"}, status_code=400)
        try:
            registration = AgentRegistration.model_validate(body)
        except ValidationError as exc:
            log.warning("rejected registration from %s: %s", request.client, exc.errors())
            details = [{"path": "/" + "/".join(map(str, e["loc"])), "errors": [e["msg"]]} for e in exc.errors()]
            return JSONResponse({"message": "Object is not valid", "details": details}, status_code=422)
        record = self.registry.register(registration)
        log.info("agent %s registered from %s", registration.agent_id, registration.ip)
        return JSONResponse({"agent_id": record.registration.agent_id})

    async def _heartbeat(self, request: Request) -> JSONResponse:
        if not authorized(request, self.secret):
            return JSONResponse({"message": "invalid cluster secret"}, status_code=401)
        agent_id = request.path_params["agent_id"]
        if not self.registry.heartbeat(agent_id):
            # Unknown (e.g. the master lost it): the agent re-registers on 404.
            return JSONResponse({"message": f"agent {agent_id} is not registered"}, status_code=404)
        return JSONResponse({"ok": True})

    async def _agents(self, request: Request) -> JSONResponse:
        if not authorized(request, self.secret):
            return JSONResponse({"message": "unauthorized"}, status_code=401)
        return JSONResponse({"agents": self.registry.as_json()})

    def mesos_app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/ping", _pong),
                Route("/v1/agents", self._register, methods=["POST"]),
                Route("/v1/agents", self._agents, methods=["GET"]),
                Route("/v1/agents/{agent_id}/heartbeat", self._heartbeat, methods=["POST"]),
            ]
        )

    # -- Marathon port ------------------------------------------------------------------
    def marathon_app(self) -> Starlette:
        return Starlette(routes=[Route("/ping", _pong)])

    async def watch_agents(self, interval: float = 1.0) -> None:
        while True:
            for agent_id in self.registry.mark_stale(self.agent_timeout):
                log.warning("agent %s unreachable (no heartbeat for %.0fs)", agent_id, self.agent_timeout)
            await asyncio.sleep(interval)


async def _pong(_request: Request) -> PlainTextResponse:
    return PlainTextResponse("pong")
