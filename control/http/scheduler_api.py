"""The Mesos v1 scheduler HTTP API on the Mesos port: ``POST /api/v1/scheduler``, plus
``/master/frameworks`` and ``/weights``.

```
POST /api/v1/scheduler {"type": "SUBSCRIBE", ...} ─► 200, Mesos-Stream-Id, RecordIO events
      (SUBSCRIBED, OFFERS, RESCIND, UPDATE, ERROR, HEARTBEAT) until the client goes
POST /api/v1/scheduler {"type": <call>, "framework_id", ...} + Mesos-Stream-Id ─► 202
      malformed or invalid call, missing or wrong stream id ─► 400 with Mesos' sentence
```

Authentication is the master's (``Authorization: token=<secret>``) or HTTP Basic with any
principal and the cluster secret, as Mesos frameworks send it; the principal becomes the
framework's. Records are compact one-line JSON; after an event burst a HEARTBEAT follows within
FLUSH_SECONDS, because line-reading clients (mesoshttp) handle a record only once the next
record's length has arrived.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from control.frameworks import CallRefused, Framework, Frameworks, Subscription
from control.master import Master
from control.mesos_state import mesos_state
from control.mesos_v1 import CallInvalid, parse_call, record

log = logging.getLogger("navstar.scheduler_api")

FLUSH_SECONDS = 0.2
HEARTBEAT = {"type": "HEARTBEAT"}


def basic_principal(request: Request) -> str | None:
    """The principal of an ``Authorization: Basic`` header (its secret is checked by TokenAuth)."""
    header = request.headers.get("authorization", "")
    if not header.lower().startswith("basic "):
        return None
    try:
        principal, _, _secret = base64.b64decode(header[6:].strip()).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return principal or None


class SchedulerApi:
    def __init__(self, master: Master) -> None:
        self.master = master
        self.frameworks: Frameworks = master.frameworks

    async def call(self, request: Request) -> Response:
        content_type = request.headers.get("content-type", "application/json").split(";")[0].strip()
        if content_type not in ("application/json", ""):
            return PlainTextResponse("Expecting 'Content-Type' of application/json", status_code=415)
        raw = await request.body()
        try:
            body = json.loads(raw)
        except ValueError as exc:
            return self._refused(400, f"Failed to parse body into JSON: {exc}")
        try:
            call = parse_call(body)
        except CallInvalid as exc:
            return self._refused(400, f"Failed to validate scheduler::Call: {exc}")
        stream_id = request.headers.get("mesos-stream-id")
        principal = basic_principal(request)
        try:
            if call.type == "SUBSCRIBE":
                accept = request.headers.get("accept", "application/json")
                if not any(kind in accept for kind in ("application/json", "*/*", "application/*")):
                    return self._refused(406, "Expecting 'Accept' to allow 'application/json'")
                if stream_id is not None:
                    return self._refused(400, "Subscribe calls should not include the 'Mesos-Stream-Id' header")
                client = request.client.host if request.client else ""
                framework, subscription = self.frameworks.subscribe(call, client, principal)
                return self._stream(framework, subscription)
            framework = self.frameworks.framework_for_call(call, stream_id)
            if principal is not None and framework.spec.principal not in (None, principal):
                return self._refused(400, f"Authenticated principal '{principal}' does not match principal "
                                          f"'{framework.spec.principal}' set in `FrameworkInfo`")
            await self.frameworks.handle(framework, call)
        except CallInvalid as exc:
            return self._refused(400, f"Failed to validate scheduler::Call: {exc}")
        except CallRefused as exc:
            return self._refused(exc.status, exc.message)
        return Response(status_code=202)

    def _refused(self, status: int, message: str) -> PlainTextResponse:
        self.frameworks.calls_refused += 1
        log.info("scheduler call refused (%d): %s", status, message)
        return PlainTextResponse(message, status_code=status)

    def _stream(self, framework: Framework, subscription: Subscription) -> StreamingResponse:
        frameworks, clock = self.frameworks, self.master.clock

        async def events() -> AsyncIterator[bytes]:
            flush = False
            try:
                while True:
                    try:
                        event = await asyncio.wait_for(subscription.queue.get(),
                                                       FLUSH_SECONDS if flush else frameworks.heartbeat_seconds)
                    except TimeoutError:
                        event = HEARTBEAT
                    if event is None:
                        return
                    flush = event is not HEARTBEAT and subscription.queue.empty()
                    yield record(event)
                    subscription.delivered(clock())
            finally:
                frameworks.stream_ended(framework, subscription)

        return StreamingResponse(events(), media_type="application/json",
                                 # X-Accel-Buffering: nginx (Admin Router's /mesos/) passes records on at once.
                                 headers={"Mesos-Stream-Id": subscription.stream_id, "Cache-Control": "no-cache",
                                          "X-Accel-Buffering": "no"})

    async def list_frameworks(self, _request: Request) -> JSONResponse:
        state = mesos_state(self.master)
        return JSONResponse({"frameworks": state["frameworks"], "completed_frameworks": state["completed_frameworks"],
                             "unregistered_frameworks": []})

    async def teardown(self, request: Request) -> Response:
        """Mesos' operator ``POST /master/teardown`` (``frameworkId=<id>``, form or query): the
        framework is removed as by its own TEARDOWN."""
        form = parse_qs((await request.body()).decode(errors="replace"))
        framework_id = (form.get("frameworkId") or [""])[0] or request.query_params.get("frameworkId")
        if not framework_id:
            return PlainTextResponse("Missing 'frameworkId' query parameter in the request body", status_code=400)
        framework = self.frameworks.frameworks.get(framework_id)
        if framework is None:
            return PlainTextResponse("No framework found with specified ID", status_code=400)
        self.frameworks.remove(framework, "operator teardown")
        return Response(status_code=200)

    async def get_weights(self, _request: Request) -> JSONResponse:
        return JSONResponse([{"role": role, "weight": weight} for role, weight in sorted(self.frameworks.weights().items())])

    async def put_weights(self, request: Request) -> Response:
        """Mesos ``PUT /weights``: ``[{"role": "batch", "weight": 2.0}]``; all or nothing."""
        try:
            body: Any = await request.json()
        except ValueError:
            return PlainTextResponse("Failed to parse update weights request JSON", status_code=400)
        if not isinstance(body, list):
            return PlainTextResponse("Expecting a JSON list of {\"role\", \"weight\"}", status_code=400)
        updates = []
        for index, entry in enumerate(body):
            role = entry.get("role") if isinstance(entry, dict) else None
            weight = entry.get("weight") if isinstance(entry, dict) else None
            if not isinstance(role, str) or not role or role == "*":
                return PlainTextResponse(f"[{index}].role: expected a role name", status_code=400)
            if not isinstance(weight, int | float) or isinstance(weight, bool) or weight <= 0:
                return PlainTextResponse(f"[{index}].weight: expected a number > 0", status_code=400)
            updates.append((role, float(weight)))
        for role, weight in updates:
            self.frameworks.set_weight(role, weight)
        return Response(status_code=200)


def scheduler_routes(master: Master) -> list[Route]:
    api = SchedulerApi(master)
    return [
        Route("/api/v1/scheduler", api.call, methods=["POST"]),
        Route("/master/api/v1/scheduler", api.call, methods=["POST"]),
        Route("/master/frameworks", api.list_frameworks),
        Route("/frameworks", api.list_frameworks),
        Route("/master/teardown", api.teardown, methods=["POST"]),
        Route("/teardown", api.teardown, methods=["POST"]),
        Route("/weights", api.get_weights, methods=["GET"]),
        Route("/weights", api.put_weights, methods=["PUT"]),
    ]
