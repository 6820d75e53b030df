"""The master's Mesos port (default :5050): agents register, heartbeat and report task statuses;
agents long-poll the cluster view (``/v1/view``); tools read Mesos ``/master/state``.

Errors: malformed JSON → 400, an invalid registration or status → 422 with ``details``, an
unknown agent → 404 (the agent re-registers), an overlay pool with no room → 409.
"""

from __future__ import annotations

import logging

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cluster.ipam import IpamError
from cluster.view import ClusterView
from control.http.common import guard, metrics_endpoint, pong, validation_details
from control.http.scheduler_api import scheduler_routes
from control.master import Master
from control.master_metrics import MasterMetrics
from control.mesos_state import mesos_state
from control.protocol import TaskStatus
from control.registry import AgentRegistration

log = logging.getLogger("navstar.master")


class MesosApi:
    def __init__(self, master: Master) -> None:
        self.master = master
        self._view_json: tuple[ClusterView, bytes] | None = None

    async def register(self, request: Request) -> JSONResponse:
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"message": "malformed JSON"}, status_code=400)
        try:
            registration = AgentRegistration.model_validate(body)
        except ValidationError as exc:
            log.warning("rejected registration from %s: %s", request.client, exc.errors())
            return JSONResponse({"message": "Object is not valid", "details": validation_details(exc)},
                                status_code=422)
        try:
            self.master.register_agent(registration)
        except IpamError as exc:
            log.warning("refused agent %s from %s: %s", registration.agent_id, registration.ip, exc)
            return JSONResponse({"message": str(exc)}, status_code=409)
        log.info("agent %s registered from %s", registration.agent_id, registration.ip)
        return JSONResponse({"agent_id": registration.agent_id})

    async def heartbeat(self, request: Request) -> JSONResponse:
        agent_id = request.path_params["agent_id"]
        if not self.master.agent_heard(agent_id):
            # Unknown (e.g. the master lost it): the agent re-registers on 404.
            return JSONResponse({"message": f"agent {agent_id} is not registered"}, status_code=404)
        return JSONResponse({"ok": True})

    async def status(self, request: Request) -> JSONResponse:
        agent_id = request.path_params["agent_id"]
        if self.master.registry.get(agent_id) is None:
            return JSONResponse({"message": f"agent {agent_id} is not registered"}, status_code=404)
        try:
            body = await request.json()
        except ValueError:
            self.master.count_rejected_agent_message()
            log.warning("garbage status from %s (%s): not JSON", agent_id, request.client)
            return JSONResponse({"message": "malformed JSON"}, status_code=400)
        try:
            status = TaskStatus.model_validate(body)
        except ValidationError as exc:
            self.master.count_rejected_agent_message()
            log.warning("garbage status from %s (%s): %s", agent_id, request.client, exc.errors())
            return JSONResponse({"message": "Object is not valid", "details": validation_details(exc)},
                                status_code=422)
        outcome = await self.master.task_status(agent_id, status)
        return JSONResponse({"task_id": status.task_id, "result": outcome})

    async def statuses(self, request: Request) -> JSONResponse:
        """Many statuses from one agent in one request (``[TaskStatus]``), applied in order; the
        answer has one result per status (``invalid`` for one that does not validate)."""
        agent_id = request.path_params["agent_id"]
        try:
            body = await request.json()
        except ValueError:
            body = None
        if self.master.registry.get(agent_id) is None:
            return JSONResponse({"message": f"agent {agent_id} is not registered"}, status_code=404)
        if not isinstance(body, list):
            self.master.count_rejected_agent_message()
            log.warning("garbage statuses from %s (%s): not a JSON list", agent_id, request.client)
            return JSONResponse({"message": "expected a JSON list of task statuses"}, status_code=400)
        results = []
        for raw in body:
            try:
                status = TaskStatus.model_validate(raw)
            except ValidationError as exc:
                self.master.count_rejected_agent_message()
                log.warning("garbage status from %s (%s): %s", agent_id, request.client, exc.errors())
                results.append({"result": "invalid", "details": validation_details(exc)})
                continue
            results.append({"task_id": status.task_id, "result": await self.master.task_status(agent_id, status)})
        return JSONResponse({"results": results})

    async def agents(self, _request: Request) -> JSONResponse:
        return JSONResponse({"agents": self.master.registry.as_json()})

    async def remove_agent(self, request: Request) -> JSONResponse:
        agent_id = request.path_params["agent_id"]
        why_not = self.master.remove_agent(agent_id, force=request.query_params.get("force") == "true")
        if why_not is None:
            return JSONResponse({"agent_id": agent_id, "removed": True})
        status = 404 if self.master.registry.get(agent_id) is None else 409
        return JSONResponse({"message": why_not}, status_code=status)

    async def view(self, request: Request) -> JSONResponse:
        try:
            since = int(request.query_params.get("since", "0"))
            wait = float(request.query_params.get("wait", "0"))
        except ValueError:
            return JSONResponse({"message": "since: expected an integer version, wait: expected seconds"},
                                status_code=400)
        view = await self.master.wait_view(since, wait)
        if self._view_json is None or self._view_json[0] is not view:
            # Every agent fetches each version: render it once. (Not gzipped: at 1,000 simulated
            # agents on loopback it saved no master CPU and their decompressing lengthened the
            # fan-out; bench/README.)
            self._view_json = (view, view.model_dump_json().encode())
        return Response(self._view_json[1], media_type="application/json")

    async def state(self, _request: Request) -> JSONResponse:
        return JSONResponse(mesos_state(self.master))


def mesos_app(master: Master, metrics: MasterMetrics) -> Starlette:
    """The Mesos port's app, behind the token check (``/ping`` open)."""
    api = MesosApi(master)
    return guard(Starlette(routes=[
        Route("/ping", pong),
        Route("/v1/agents", api.register, methods=["POST"]),
        Route("/v1/agents", api.agents, methods=["GET"]),
        Route("/v1/agents/{agent_id}", api.remove_agent, methods=["DELETE"]),
        Route("/v1/agents/{agent_id}/heartbeat", api.heartbeat, methods=["POST"]),
        Route("/v1/agents/{agent_id}/status", api.status, methods=["POST"]),
        Route("/v1/agents/{agent_id}/statuses", api.statuses, methods=["POST"]),
        Route("/v1/view", api.view),
        Route("/master/state", api.state),
        Route("/master/state.json", api.state),
        Route("/state", api.state),
        Route("/state.json", api.state),
        Route("/metrics", metrics_endpoint(metrics)),
        *scheduler_routes(master),
    ]), master)
