"""A small Marathon for tests and benches: real HTTP (and SSE), apps and tasks as the test sets them.

``GET /v2/apps[?embed=apps.tasks]``, ``GET/PUT /v2/apps/<id>`` (``{"instances": n}`` is recorded
and, with a ``scale`` hook, turned into tasks), ``GET /v2/events`` (SSE: ``event_stream_attached``
then one ``status_update_event`` per change), and the test's own ``PUT /_fake/apps`` (replace every
app, publish an event). Run alone: ``python -m marathon_lb.fake_marathon --listen 127.0.0.1:8080``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

ScaleHook = Callable[[dict[str, Any], int], None]


class FakeMarathon:
    def __init__(self, apps: list[dict[str, Any]] | None = None, scale: ScaleHook | None = None,
                 token: str | None = None) -> None:
        self.apps: dict[str, dict[str, Any]] = {a["id"]: a for a in apps or []}
        self.scale = scale
        self.token = token
        self.puts: list[tuple[str, int]] = []
        self.reads = 0
        self._subscribers: set[asyncio.Queue[str]] = set()

    def set_apps(self, apps: list[dict[str, Any]]) -> None:
        self.apps = {a["id"]: a for a in apps}
        self.publish("status_update_event")

    def publish(self, event_type: str) -> None:
        for queue in self._subscribers:
            queue.put_nowait(event_type)

    def _authorized(self, request: Request) -> bool:
        return self.token is None or request.headers.get("authorization") == f"token={self.token}"

    def app(self) -> Starlette:
        async def list_apps(request: Request) -> Response:
            if not self._authorized(request):
                return JSONResponse({"message": "Unauthorized"}, 401)
            self.reads += 1
            embed = "tasks" in request.query_params.get("embed", "")
            return JSONResponse({"apps": [self._json(a, embed) for a in self.apps.values()]})

        async def one_app(request: Request) -> Response:
            if not self._authorized(request):
                return JSONResponse({"message": "Unauthorized"}, 401)
            app_id = "/" + request.path_params["app_id"].strip("/")
            app = self.apps.get(app_id)
            if app is None:
                return JSONResponse({"message": f"App '{app_id}' does not exist"}, 404)
            if request.method == "PUT":
                body = await request.json()
                instances = body.get("instances")
                if not isinstance(instances, int) or instances < 0:
                    return JSONResponse({"message": "instances: expected a non-negative integer"}, 422)
                self.puts.append((app_id, instances))
                app["instances"] = instances
                if self.scale:
                    self.scale(app, instances)
                self.publish("deployment_info")
                return JSONResponse({"deploymentId": f"d{len(self.puts)}", "version": "v"})
            return JSONResponse({"app": self._json(app, True)})

        async def events(request: Request) -> Response:
            if not self._authorized(request):
                return JSONResponse({"message": "Unauthorized"}, 401)
            return StreamingResponse(self._stream(), media_type="text/event-stream")

        async def replace(request: Request) -> Response:
            self.set_apps(await request.json())
            return JSONResponse({"apps": len(self.apps)})

        return Starlette(routes=[
            Route("/v2/apps", list_apps), Route("/v2/apps/{app_id:path}", one_app, methods=["GET", "PUT"]),
            Route("/v2/events", events), Route("/_fake/apps", replace, methods=["PUT"])])

    @staticmethod
    def _json(app: dict[str, Any], embed: bool) -> dict[str, Any]:
        out = {k: v for k, v in app.items() if k != "tasks"}
        out.setdefault("instances", len(app.get("tasks") or []))
        if embed:
            out["tasks"] = app.get("tasks") or []
        return out

    async def _stream(self) -> AsyncIterator[str]:
        queue: asyncio.Queue[str] = asyncio.Queue()
        self._subscribers.add(queue)
        try:
            yield 'event: event_stream_attached\ndata: {"eventType":"event_stream_attached"}\n\n'
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), 5.0)
                except TimeoutError:
                    yield ":\n\n"
                    continue
                yield f"event: {event}\ndata: {json.dumps({'eventType': event})}\n\n"
        finally:
            self._subscribers.discard(queue)


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:8080")
    parser.add_argument("--apps", help="a JSON file: the list of apps (with their tasks) to start with")
    parser.add_argument("--token", help="require 'Authorization: token=<this>'")
    args = parser.parse_args()
    apps = json.load(open(args.apps)) if args.apps else []
    host, _, port = args.listen.rpartition(":")
    uvicorn.run(FakeMarathon(apps, token=args.token).app(), host=host or "127.0.0.1", port=int(port),
                log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
