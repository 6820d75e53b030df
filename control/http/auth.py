"""Token check for every API request but the open paths (``/ping``), as ASGI middleware."""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from control.auth import authorized

log = logging.getLogger("navstar.master.auth")


class TokenAuth:
    """401 unless ``Authorization: token=<secret>`` (or ``Bearer <secret>``); no secret: open."""

    def __init__(self, app: ASGIApp, secret: str | None, open_paths: tuple[str, ...] = ("/ping",)) -> None:
        self.app = app
        self.secret = secret
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.secret is None or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        if not authorized(request, self.secret):
            log.warning("rejected %s %s from %s: missing or wrong token", request.method, scope["path"],
                        request.client.host if request.client else "?")
            response = JSONResponse(
                {"message": "Unauthorized: send 'Authorization: token=<secret>' or a bearer token"},
                status_code=401, headers={"WWW-Authenticate": 'token realm="navstar"'})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
