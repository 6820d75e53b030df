"""The real agent client against an agent API speaking control/protocol.py (over ASGI)."""

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from control.agent_client import AgentAddress, AgentUnavailable, HttpAgentClient, LaunchRejected
from control.protocol import TaskLaunch

AGENT = AgentAddress("agent-1", "198.18.0.11")


def agent_app(seen: list) -> Starlette:
    async def ping(request: Request) -> JSONResponse:
        return JSONResponse({"agent_id": "agent-1"})

    async def launch(request: Request) -> JSONResponse:
        seen.append((request.headers.get("authorization"), await request.json()))
        body = seen[-1][1]
        if body["image"] == "unknown":
            return JSONResponse({"message": "no runtime for image unknown"}, status_code=422)
        if body["image"] == "crash":
            return JSONResponse({"message": "boom"}, status_code=500)
        return JSONResponse({"task_id": body["task_id"]}, status_code=202)

    async def kill(request: Request) -> JSONResponse:
        seen.append(("kill", request.path_params["task_id"], request.query_params["grace"]))
        known = request.path_params["task_id"] == "t1"
        return JSONResponse({}, status_code=202 if known else 404)

    async def tasks(request: Request) -> JSONResponse:
        return JSONResponse([{"task_id": "t1", "state": "TASK_RUNNING", "timestamp": 1.0}])

    return Starlette(routes=[Route("/v1/ping", ping), Route("/v1/tasks", launch, methods=["POST"]),
                             Route("/v1/tasks", tasks), Route("/v1/tasks/{task_id}", kill, methods=["DELETE"])])


async def test_http_agent_client_maps_answers_to_outcomes():
    seen: list = []
    client = HttpAgentClient("s3cret", transport=httpx.ASGITransport(agent_app(seen)))
    launch = TaskLaunch(task_id="t1", app_id="/a", name="a", cmd="true", image="nginx")
    await client.launch(AGENT, launch)
    assert seen[0][0] == "token=s3cret" and seen[0][1]["task_id"] == "t1"
    with pytest.raises(LaunchRejected, match="unknown"):
        await client.launch(AGENT, launch.model_copy(update={"image": "unknown"}))
    with pytest.raises(AgentUnavailable):
        await client.launch(AGENT, launch.model_copy(update={"image": "crash"}))
    assert await client.kill(AGENT, "t1", 2.5) is True
    assert ("kill", "t1", "2.5") in seen
    assert await client.kill(AGENT, "gone", 1) is False
    assert await client.ping(AGENT) is True
    assert await client.ping(AgentAddress("agent-2", "198.18.0.11")) is False   # someone else answers
    assert [s.task_id for s in await client.tasks(AGENT)] == ["t1"]
    await client.close()


async def test_unreachable_agent_is_agent_unavailable():
    client = HttpAgentClient(None, timeout=0.5)
    closed = AgentAddress("agent-9", "127.0.0.1", 1)     # nothing listens on port 1
    assert await client.ping(closed) is False
    for call in (client.launch(closed, TaskLaunch(task_id="x", app_id="/x", name="x")),
                 client.kill(closed, "x", 1), client.tasks(closed)):
        with pytest.raises(AgentUnavailable):
            await call
    await client.close()
