"""Marathon as marathon-lb reads it: the event stream, apps with their tasks, agent addresses.

::

    GET /v2/events (SSE) ──event──► trigger ─┐  (a burst of events → one read, after `coalesce` s)
    stream attached ───────────────► trigger ─┤
    every `resync` s ──────────────► trigger ─┴─► GET /v2/apps?embed=apps.tasks ──► on_apps(apps)
                                                   failed: counted, logged, retried with backoff;
                                                   the last configuration stays

Auth, as in-cluster clients of this project do it: the cluster secret (``--token-file`` or
``--token``) sent as ``Authorization: token=…`` to the master directly (``http://<master>:8080``),
or DC/OS-style credentials ``uid:password`` (``--auth-credentials``) exchanged for a login token at
Admin Router (``/acs/api/v1/auth/login`` on the Marathon URL's host, e.g.
``http://<master>/service/marathon``), logged in again on a 401.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from marathon_lb.applier import Metrics

log = logging.getLogger("navstar.marathon_lb.marathon")

# Events after which the apps or their tasks may differ (Marathon 1.x names).
RELEVANT = frozenset({
    "status_update_event", "health_status_changed_event", "api_post_event", "app_terminated_event",
    "deployment_success", "deployment_failed", "deployment_info", "deployment_step_success",
    "deployment_step_failure", "instance_changed_event", "instance_health_changed_event",
    "unhealthy_task_kill_event", "unhealthy_instance_kill_event", "failed_health_check_event",
})


@dataclass
class Auth:
    token: str | None = None
    credentials: tuple[str, str] | None = None
    login_url: str | None = None

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"token={self.token}"} if self.token else {}


def login_url_for(marathon_url: str) -> str:
    parts = urlsplit(marathon_url)
    return urlunsplit((parts.scheme, parts.netloc, "/acs/api/v1/auth/login", "", ""))


def mesos_url_for(marathon_url: str) -> str:
    """The Mesos API beside a Marathon URL: ``…/service/marathon`` → ``…/mesos``; ``:8080`` → ``:5050``."""
    parts = urlsplit(marathon_url.rstrip("/"))
    if parts.path.endswith("/service/marathon"):
        return urlunsplit((parts.scheme, parts.netloc, parts.path[: -len("/service/marathon")] + "/mesos", "", ""))
    host = parts.hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"
    return urlunsplit((parts.scheme, f"{host}:5050", "", "", ""))


class MarathonClient:
    def __init__(self, url: str, auth: Auth | None = None, timeout: float = 10.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.url = url.rstrip("/")
        self.auth = auth or Auth()
        self.http = httpx.AsyncClient(base_url=self.url, timeout=timeout, transport=transport)

    async def login(self) -> None:
        if self.auth.credentials is None:
            return
        uid, password = self.auth.credentials
        url = self.auth.login_url or login_url_for(self.url)
        resp = await self.http.post(url, json={"uid": uid, "password": password})
        if resp.status_code != 200:
            raise httpx.HTTPStatusError(f"login as {uid} at {url}: {resp.status_code} {resp.text[:200]}",
                                        request=resp.request, response=resp)
        self.auth.token = str(resp.json()["token"])

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One API call; logs in first (or again after a 401) when credentials are set."""
        if self.auth.credentials and not self.auth.token:
            await self.login()
        resp = await self.http.request(method, path, headers=self.auth.headers(), **kwargs)
        if resp.status_code == 401 and self.auth.credentials:
            await self.login()
            resp = await self.http.request(method, path, headers=self.auth.headers(), **kwargs)
        return resp

    async def apps(self) -> list[dict[str, Any]]:
        resp = await self.request("GET", "/v2/apps", params={"embed": "apps.tasks"})
        resp.raise_for_status()
        apps = resp.json().get("apps")
        if not isinstance(apps, list):
            raise ValueError("/v2/apps: no 'apps' list in the answer")
        return apps

    async def events(self) -> AsyncIterator[str]:
        """The event types on ``/v2/events`` as they arrive (raises when the stream breaks)."""
        if self.auth.credentials and not self.auth.token:
            await self.login()
        timeout = httpx.Timeout(10.0, read=60.0)     # Marathon comments every 15 s on an idle stream
        async with self.http.stream("GET", "/v2/events", headers={**self.auth.headers(), "Accept": "text/event-stream"},
                                    timeout=timeout) as resp:
            if resp.status_code == 401 and self.auth.credentials:
                self.auth.token = None
            resp.raise_for_status()
            async for line in resp.aiter_lines():
                if line.startswith("event:"):       # the type; the data line is not needed (we re-read)
                    yield line[6:].strip()
        raise httpx.ReadError("the event stream ended")

    async def close(self) -> None:
        await self.http.aclose()


class HostResolver:
    """Agent host names → IPv4: literal addresses, the system resolver, then the Mesos master's
    agent list (``/master/state``: hostname and ``slave(1)@ip:port``), for labs whose agent names
    are not in DNS. Answers are cached; ``resolve`` itself never blocks."""

    def __init__(self, mesos: MarathonClient | None = None) -> None:
        self.mesos = mesos
        self.known: dict[str, str] = {}

    async def prepare(self, hosts: Iterable[str]) -> None:
        missing = {h for h in hosts if h and h not in self.known and not _is_ip(h)}
        loop = asyncio.get_running_loop()
        for host in missing:
            with contextlib.suppress(OSError):
                infos = await asyncio.wait_for(loop.getaddrinfo(host, None, family=socket.AF_INET), 2.0)
                if infos:
                    self.known[host] = str(infos[0][4][0])
        if self.mesos is not None and any(h not in self.known for h in missing):
            try:
                resp = await self.mesos.request("GET", "/master/state")
                resp.raise_for_status()
                for agent in resp.json().get("slaves", []):
                    ip = str(agent.get("pid", "")).rpartition("@")[2].rpartition(":")[0]
                    if _is_ip(ip):
                        self.known.setdefault(str(agent.get("hostname")), ip)
            except (httpx.HTTPError, ValueError) as exc:
                log.warning("agent addresses from Mesos: %s", exc)

    def resolve(self, host: str) -> str | None:
        return host if _is_ip(host) else self.known.get(host)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


class Follower:
    """Follows the event stream and re-reads apps (coalesced); hands each read to ``on_apps``."""

    def __init__(self, client: MarathonClient, on_apps: Callable[[list[dict[str, Any]]], Awaitable[None]],
                 metrics: Metrics, coalesce: float = 0.2, resync: float = 60.0, max_backoff: float = 10.0) -> None:
        self.client = client
        self.on_apps = on_apps
        self.metrics = metrics
        self.coalesce = coalesce
        self.resync = resync
        self.max_backoff = max_backoff
        self.wanted = asyncio.Event()
        self.reads = 0
        self.last_apps: list[dict[str, Any]] | None = None

    def trigger(self) -> None:
        self.wanted.set()

    async def run(self) -> None:
        await asyncio.gather(self._stream(), self._refresh())

    async def _stream(self) -> None:
        backoff = 0.5
        while True:
            attached = False
            try:
                async for event_type in self.client.events():
                    if not attached:
                        attached = True
                        log.info("event stream attached at %s", self.client.url)
                    backoff = 0.5
                    self.metrics.connected.set(1)
                    self.metrics.events.labels(event_type).inc()
                    if event_type in RELEVANT or event_type == "event_stream_attached":
                        self.trigger()
            except (httpx.HTTPError, OSError, ValueError) as exc:
                self.metrics.connected.set(0)
                log.warning("event stream %s: %s; again in %.1fs", self.client.url, exc or type(exc).__name__, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff)

    async def _refresh(self) -> None:
        backoff = 0.5
        self.trigger()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wanted.wait(), self.resync)
            await asyncio.sleep(self.coalesce)
            self.wanted.clear()
            try:
                apps = await self.client.apps()
            except (httpx.HTTPError, OSError, ValueError, json.JSONDecodeError) as exc:
                self.metrics.reads.labels("error").inc()
                log.warning("reading apps from %s: %s; keeping the last configuration, again in %.1fs",
                            self.client.url, exc or type(exc).__name__, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)
                self.trigger()
                continue
            backoff = 0.5
            self.reads += 1
            self.metrics.reads.labels("ok").inc()
            self.last_apps = apps
            await self.on_apps(apps)
