"""The agent API the master calls (default ``<agent-ip>:5051``); see ``control/protocol.py``.

Launches are answered at once (``control.agent.launcher``): the body is one ``TaskLaunch`` or
``{"launches": [TaskLaunch, …]}`` (a batch, answered per task); tasks start off the loop and
report their statuses as they happen. ``GET /v1/networks`` lists the container networks the agent
can attach tasks to (its CNI configurations) and the files it skipped, each with its error.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from control.agent.executor import Executor
from control.agent.launcher import Launcher
from control.auth import authorized
from control.protocol import TaskLaunch

log = logging.getLogger("navstar.agent.api")


def _invalid(exc: ValueError) -> str:
    return str(exc.errors()) if isinstance(exc, ValidationError) else str(exc)


def agent_api(agent_id: str, executor: Executor, secret: str | None,
              on_launch=None, launcher: Launcher | None = None,
              networks: Callable[[], dict[str, Any]] | None = None) -> Starlette:
    """``on_launch(launch)`` (optional) runs after a task started (health checks);
    ``networks()`` (optional) describes the agent's container networks for ``GET /v1/networks``."""
    launcher = launcher or Launcher(executor, on_started=on_launch)

    def guard(request: Request) -> JSONResponse | None:
        if not authorized(request, secret):
            log.warning("rejected %s %s from %s: bad token", request.method, request.url.path, request.client)
            return JSONResponse({"message": "unauthorized"}, status_code=401)
        return None

    async def ping(request: Request) -> JSONResponse:
        return guard(request) or JSONResponse({"agent_id": agent_id})

    async def launch(request: Request) -> JSONResponse:
        if (denied := guard(request)) is not None:
            return denied
        try:
            body: Any = await request.json()
        except ValueError:
            return JSONResponse({"message": "malformed JSON"}, status_code=400)
        if isinstance(body, dict) and isinstance(body.get("launches"), list):
            return launch_batch(body["launches"])
        try:
            task = TaskLaunch.model_validate(body)
        except ValueError as exc:
            log.warning("rejected a launch: %s", _invalid(exc))
            return JSONResponse({"message": "invalid task launch", "details": _invalid(exc)}, status_code=422)
        outcome = launcher.submit([task])[task.task_id]
        if outcome == "busy":
            return JSONResponse({"message": f"agent {agent_id} is busy: {launcher.queued} launches queued"},
                                status_code=503, headers={"Retry-After": "1"})
        return JSONResponse({"task_id": task.task_id, "result": outcome}, status_code=202)

    def launch_batch(raw: list[Any]) -> JSONResponse:
        launches: list[TaskLaunch] = []
        rejected: dict[str, str] = {}
        for index, item in enumerate(raw):
            try:
                launches.append(TaskLaunch.model_validate(item))
            except ValueError as exc:
                task_id = item.get("task_id") if isinstance(item, dict) else None
                rejected[str(task_id or f"#{index}")] = f"invalid task launch: {_invalid(exc)}"
        if rejected:
            log.warning("rejected launches: %s", rejected)
        return JSONResponse({"results": launcher.submit(launches), "rejected": rejected,
                             "queued": launcher.queued}, status_code=202)

    async def kill(request: Request) -> JSONResponse:
        if (denied := guard(request)) is not None:
            return denied
        task_id = request.path_params["task_id"]
        try:
            grace = float(request.query_params["grace"]) if "grace" in request.query_params else None
        except ValueError:
            return JSONResponse({"message": "grace: expected seconds"}, status_code=400)
        if not launcher.kill(task_id) and not await asyncio.to_thread(executor.kill, task_id, grace):
            return JSONResponse({"message": f"unknown task {task_id}"}, status_code=404)
        return JSONResponse({"task_id": task_id}, status_code=202)

    async def tasks(request: Request) -> JSONResponse:
        if (denied := guard(request)) is not None:
            return denied
        # The launcher first: a task moves from it to the executor, and is never in neither.
        in_flight = launcher.statuses()
        held = executor.statuses()
        ids = {status.task_id for status in held}
        return JSONResponse([s.model_dump() for s in [*held, *(s for s in in_flight if s.task_id not in ids)]])

    async def list_networks(request: Request) -> JSONResponse:
        if (denied := guard(request)) is not None:
            return denied
        if networks is None:
            return JSONResponse({"networks": [], "skipped": []})
        return JSONResponse(await asyncio.to_thread(networks))

    return Starlette(routes=[
        Route("/v1/ping", ping),
        Route("/v1/networks", list_networks),
        Route("/v1/tasks", launch, methods=["POST"]),
        Route("/v1/tasks", tasks, methods=["GET"]),
        Route("/v1/tasks/{task_id}", kill, methods=["DELETE"]),
    ])
