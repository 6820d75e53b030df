"""The batch framework's HTTP API (behind Admin Router at ``/service/<name>/``).

``POST /v1/jobs`` ``{"cmd", "parallel", "cpus", "mem"}`` → 201 the job; ``GET /v1/jobs``;
``GET /v1/jobs/{id}?wait=<s>`` (waits up to ``wait`` seconds, at most 60, for the job to end);
``GET /`` the framework's state; ``GET /ping``. Invalid bodies → 422 with Marathon-style
``details`` naming the field; unknown job → 404.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from batch.framework import BatchFramework

MAX_WAIT_SECONDS = 60.0


class JobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cmd: str = Field(min_length=1, max_length=4096)
    parallel: int = Field(default=1, ge=1, le=1000)
    cpus: float = Field(default=0.1, gt=0, le=64)
    mem: float = Field(default=32, ge=1, le=1024 * 1024)


def _details(exc: ValidationError) -> list[dict[str, Any]]:
    return [{"path": "/" + "/".join(map(str, e["loc"])), "errors": [e["msg"]]} for e in exc.errors()]


def batch_app(framework: BatchFramework) -> Starlette:
    async def ping(_request: Request) -> PlainTextResponse:
        return PlainTextResponse("pong")

    async def index(_request: Request) -> JSONResponse:
        return JSONResponse(framework.status())

    async def submit(request: Request) -> JSONResponse:
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"message": "malformed JSON"}, status_code=400)
        try:
            job_request = JobRequest.model_validate(body)
        except ValidationError as exc:
            return JSONResponse({"message": "Object is not valid", "details": _details(exc)}, status_code=422)
        job = await framework.submit(job_request.cmd, job_request.parallel, job_request.cpus, job_request.mem)
        return JSONResponse(job.as_json(), status_code=201)

    async def jobs(_request: Request) -> JSONResponse:
        return JSONResponse({"jobs": [job.as_json() for job in framework.jobs.values()]})

    async def job(request: Request) -> JSONResponse:
        found = framework.jobs.get(request.path_params["job_id"])
        if found is None:
            return JSONResponse({"message": f"job {request.path_params['job_id']} does not exist"}, status_code=404)
        try:
            wait = min(float(request.query_params.get("wait", "0")), MAX_WAIT_SECONDS)
        except ValueError:
            return JSONResponse({"message": "wait: expected seconds"}, status_code=400)
        if wait > 0 and not found.done:
            try:
                await asyncio.wait_for(found.done_event.wait(), wait)
            except TimeoutError:
                pass
        return JSONResponse(found.as_json())

    return Starlette(routes=[
        Route("/", index), Route("/ping", ping), Route("/v1/jobs", submit, methods=["POST"]),
        Route("/v1/jobs", jobs, methods=["GET"]), Route("/v1/jobs/{job_id}", job),
    ])
