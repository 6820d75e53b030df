"""The agent API the master calls (default ``<agent-ip>:5051``); see ``control/protocol.py``."""

from __future__ import annotations

import asyncio
import logging

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from control.agent.executor import Executor
from control.auth import authorized
from control.protocol import TaskLaunch

log = logging.getLogger("navstar.agent.api")


def agent_api(agent_id: str, executor: Executor, secret: str | None,
              on_launch=None) -> Starlette:
    """``on_launch(launch)`` (optional) runs after the executor accepted a launch (health checks)."""

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
            task = TaskLaunch.model_validate(await request.json())
        except ValueError as exc:
            details = exc.errors() if isinstance(exc, ValidationError) else str(exc)
            log.warning("rejected a launch: %s", details)
            return JSONResponse({"message": "invalid task launch", "details": str(details)}, status_code=422)
        # Launching shells out and plumbs networks: keep it off the event loop.
        await asyncio.to_thread(executor.launch, task)
        if on_launch is not None and task.task_id in executor.tasks:
            on_launch(task)
        return JSONResponse({"task_id": task.task_id}, status_code=202)

    async def kill(request: Request) -> JSONResponse:
        if (denied := guard(request)) is not None:
            return denied
        task_id = request.path_params["task_id"]
        try:
            grace = float(request.query_params["grace"]) if "grace" in request.query_params else None
        except ValueError:
            return JSONResponse({"message": "grace: expected seconds"}, status_code=400)
        if not await asyncio.to_thread(executor.kill, task_id, grace):
            return JSONResponse({"message": f"unknown task {task_id}"}, status_code=404)
        return JSONResponse({"task_id": task_id}, status_code=202)

    async def tasks(request: Request) -> JSONResponse:
        if (denied := guard(request)) is not None:
            return denied
        return JSONResponse([s.model_dump() for s in executor.statuses()])

    return Starlette(routes=[
        Route("/v1/ping", ping),
        Route("/v1/tasks", launch, methods=["POST"]),
        Route("/v1/tasks", tasks, methods=["GET"]),
        Route("/v1/tasks/{task_id}", kill, methods=["DELETE"]),
    ])
