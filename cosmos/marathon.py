"""Cosmos' only way to the cluster: Marathon's REST API (``/v2/apps``), over HTTP.

``MarathonApps`` wraps an ``httpx.AsyncClient`` whose base URL is Marathon (the master's
``:8080`` with the cluster's credential in the lab; tests hand in a client on the real Marathon
API in-process). Network failures and 5xx answers become ``MarathonUnavailable`` (503); a refused
app becomes ``MarathonBadResponse`` (400, Marathon's details kept); an id taken, ``None`` from
``create``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

from cosmos.errors import MarathonBadResponse, MarathonUnavailable


def app_path(app_id: str) -> str:
    return "/v2/apps/" + quote(app_id.strip("/"), safe="/")


class MarathonApps:
    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self.client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise MarathonUnavailable(f"{method} {path}: {exc or type(exc).__name__}") from None
        if response.status_code >= 500:
            raise MarathonUnavailable(f"{method} {path}: HTTP {response.status_code}: {response.text[:200]}")
        return response

    async def list(self) -> list[dict[str, Any]]:
        """Every app Marathon runs (id, labels and the rest)."""
        response = await self._call("GET", "/v2/apps")
        if response.status_code != 200:
            raise MarathonBadResponse(response.status_code, _json(response))
        return list(response.json().get("apps", []))

    async def get(self, app_id: str) -> dict[str, Any] | None:
        response = await self._call("GET", app_path(app_id))
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise MarathonBadResponse(response.status_code, _json(response))
        return dict(response.json()["app"])

    async def create(self, app: dict[str, Any]) -> dict[str, Any] | None:
        """Posts ``app``; Marathon's answer, or None when the id is taken (409)."""
        response = await self._call("POST", "/v2/apps", json=app)
        if response.status_code == 409:
            return None
        if response.status_code not in (200, 201):
            raise MarathonBadResponse(response.status_code, _json(response))
        return dict(response.json())

    async def destroy(self, app_id: str) -> bool:
        """Removes the app (force: whatever deployment runs); False when it was already gone."""
        response = await self._call("DELETE", app_path(app_id), params={"force": "true"})
        if response.status_code == 404:
            return False
        if response.status_code not in (200, 202):
            raise MarathonBadResponse(response.status_code, _json(response))
        return True


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return {"message": response.text[:300]}
