"""What both of the master's ports share: the open ``/ping``, the address learner, auth and metrics."""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from control.http.auth import TokenAuth
from control.http.ha import LeaderRedirect, StoreGuard

if TYPE_CHECKING:
    from control.master import Master
    from control.master_metrics import MasterMetrics

OPEN_PATHS = ("/ping",)


async def pong(_request: Request) -> PlainTextResponse:
    return PlainTextResponse("pong")


def metrics_endpoint(metrics: MasterMetrics):
    async def endpoint(_request: Request) -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)
    return endpoint


def validation_details(exc: ValidationError) -> list[dict[str, Any]]:
    """Pydantic errors in Marathon's 422 shape: ``[{"path": "/a/0", "errors": [...]}]``."""
    return [{"path": "/" + "/".join(map(str, e["loc"])), "errors": [e["msg"]]} for e in exc.errors()]


def guard(app: Starlette, master: Master) -> Starlette:
    """The token check on every route but ``/ping``, and address learning (outermost)."""
    # Several masters (control/http/ha.py): 503 while the store refuses writes; /master/redirect.
    app.add_middleware(StoreGuard, store=lambda: master.store)
    app.add_middleware(TokenAuth, secret=master.secret, open_paths=OPEN_PATHS)
    app.add_middleware(LeaderRedirect, address=lambda: f"{master.advertise_ip}:{master.mesos_port}")
    app.add_middleware(LearnAddress, master=master)
    return app


class LearnAddress:
    """ASGI wrapper: tells the master which local address its clients reach it on."""

    def __init__(self, app: ASGIApp, master: Master) -> None:
        self.app = app
        self.master = master

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.master.learning_address and scope["type"] == "http" and scope.get("server"):
            host = scope["server"][0]
            if host and not host.startswith("127.") and host not in ("::1", "0.0.0.0", "localhost"):
                try:
                    ipaddress.IPv4Address(host)
                except ValueError:
                    pass
                else:
                    self.master.learn_address(host)
        await self.app(scope, receive, send)
