"""The agent's link to the master: register, then heartbeat; re-register when forgotten."""

from __future__ import annotations

import asyncio
import logging

import httpx

from control.auth import auth_header
from control.registry import AgentRegistration

log = logging.getLogger("navstar.agent")


class MasterLink:
    def __init__(self, master_url: str, registration: AgentRegistration, secret: str | None,
                 heartbeat_interval: float = 5.0) -> None:
        self.master_url = master_url.rstrip("/")
        self.registration = registration
        self.heartbeat_interval = heartbeat_interval
        self._client = httpx.AsyncClient(headers=auth_header(secret), timeout=5.0)
        self.registered = asyncio.Event()

    async def register(self) -> None:
        """Retries until the master accepts; backs off up to 2 s between tries."""
        delay = 0.1
        while True:
            try:
                resp = await self._client.post(
                    f"{self.master_url}/v1/agents", json=self.registration.model_dump()
                )
                if resp.status_code == 200:
                    log.info("registered with %s as %s", self.master_url, self.registration.agent_id)
                    self.registered.set()
                    return
                log.error("master refused registration: %s %s", resp.status_code, resp.text)
            except httpx.HTTPError as exc:
                log.info("master %s not reachable yet: %s", self.master_url, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def run(self) -> None:
        await self.register()
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            try:
                resp = await self._client.post(
                    f"{self.master_url}/v1/agents/{self.registration.agent_id}/heartbeat"
                )
                if resp.status_code == 404:
                    self.registered.clear()
                    await self.register()
            except httpx.HTTPError as exc:
                log.warning("heartbeat failed: %s", exc)

    async def close(self) -> None:
        await self._client.aclose()
