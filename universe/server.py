"""The local Universe served over HTTP, as DC/OS' local-universe server did (``:8082/repo``).

``GET /repo`` answers the repository built from the package folders at start-up, with media type
``application/vnd.dcos.universe.repo+json;charset=utf-8;version=v3``; Cosmos reads it like any
other repository URI. ``GET /ping`` answers ``pong``.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from universe.repository import REPO_MEDIA_TYPE


def universe_app(repository: dict[str, Any]) -> Starlette:
    body = json.dumps(repository).encode()

    async def repo(_request: Request) -> Response:
        return Response(body, media_type=REPO_MEDIA_TYPE)

    async def ping(_request: Request) -> Response:
        return Response("pong", media_type="text/plain")

    return Starlette(routes=[Route("/repo", repo), Route("/ping", ping)])
