"""A master that does not lead (several masters on ZooKeeper): what its ports answer.

```
:8080 Marathon   /ping, /v2/leader ─► answered here
                 anything else ─► proxied to the leader's :8080 (as Marathon's followers do)
:5050 Mesos      /ping ─► here;  /master/redirect and anything else ─► 307 to the leader's :5050
                 (as Mesos' followers do)
no leader known ─► 503 {"message": "no leader elected …"}
```

``LeaderSwitch`` is the ASGI app the composition root serves on each port: the follower's app
until this master is elected, the leader's (``control.http.master_apps``) afterwards.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import httpx
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from control.http.auth import TokenAuth
from control.leadership import Leadership, MasterAddress

log = logging.getLogger("navstar.follower")

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
              "transfer-encoding", "upgrade", "host", "content-length"}


def no_leader() -> JSONResponse:
    return JSONResponse({"message": "no leader elected; try again shortly"}, status_code=503,
                        headers={"Retry-After": "1"})


class LeaderSwitch:
    """Serves ``follower`` until ``lead(app)`` is called; then that app, for good."""

    def __init__(self, follower: ASGIApp) -> None:
        self.app = follower

    def lead(self, leader: ASGIApp) -> None:
        self.app = leader

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


def follower_marathon_app(leadership: Callable[[], Leadership], secret: str | None) -> Starlette:
    client = httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=2.0))

    async def pong(_request: Request) -> PlainTextResponse:
        return PlainTextResponse("pong")

    async def leader(_request: Request) -> Response:
        current = leadership().leader
        if current is None:
            return no_leader()
        return JSONResponse({"leader": f"{current.ip}:8080"})

    async def proxy(request: Request) -> Response:
        current = leadership().leader
        if current is None:
            return no_leader()
        url = httpx.URL(f"http://{current.ip}:8080{request.url.path}", query=request.url.query.encode())
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP]
        headers.append(("X-Forwarded-For", request.client.host if request.client else ""))
        upstream = client.build_request(request.method, url, headers=headers, content=await request.body())
        try:
            answer = await client.send(upstream, stream=True)
        except httpx.HTTPError as exc:
            log.warning("proxy to the leader %s failed: %s", current.ip, exc)
            return JSONResponse({"message": f"the leader {current.ip} did not answer: {exc.__class__.__name__}"},
                                status_code=503, headers={"Retry-After": "1"})
        kept = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP}
        return StreamingResponse(answer.aiter_raw(), status_code=answer.status_code, headers=kept,
                                 background=BackgroundTask(answer.aclose))

    app = Starlette(routes=[
        Route("/ping", pong),
        Route("/v2/leader", leader, methods=["GET"]),
        Route("/{path:path}", proxy, methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"]),
    ])
    app.add_middleware(TokenAuth, secret=secret, open_paths=("/ping",))
    return app


def follower_mesos_app(leadership: Callable[[], Leadership]) -> Starlette:
    async def pong(_request: Request) -> PlainTextResponse:
        return PlainTextResponse("pong")

    async def redirect(request: Request) -> Response:
        current: MasterAddress | None = leadership().leader
        if current is None:
            return no_leader()
        path = "" if request.url.path == "/master/redirect" else request.url.path
        query = f"?{request.url.query}" if request.url.query else ""
        return RedirectResponse(f"{current.url}{path}{query}", status_code=307)

    return Starlette(routes=[
        Route("/ping", pong),
        Route("/{path:path}", redirect, methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"]),
    ])


def follower_backend_app() -> Starlette:
    """Admin Router's backend on a follower: Admin Router sends to the leader's, so this only
    says where to go."""
    async def elsewhere(_request: Request) -> Response:
        return JSONResponse({"message": "this master is not the leader; Admin Router uses the leader's backend"},
                            status_code=503, headers={"Retry-After": "1"})

    return Starlette(routes=[Route("/{path:path}", elsewhere, methods=["GET", "POST", "PUT", "PATCH", "DELETE"])])
