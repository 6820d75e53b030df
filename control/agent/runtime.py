"""The agent's link to the master: register, heartbeat, report task status, watch the view.

```
register (retry) ──► report every live task (reconciliation) ──► heartbeat loop
executor status ──► outbox ──POST /v1/agents/{id}/statuses──► master   (batched, in order, kept
                                                                    and resent until acknowledged)
GET /v1/view?since=N&wait=S ──► on_view(ClusterView)   (last view kept while the master is away)
```
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import httpx

from cluster.view import ClusterView
from control.auth import auth_header
from control.protocol import TaskStatus
from control.registry import AgentRegistration

log = logging.getLogger("navstar.agent")

STATUS_BATCH = 200
MOVED = object()        # what a request cut short by a leader change gives
T = TypeVar("T")


class MasterLink:
    def __init__(self, master_url: str, registration: AgentRegistration, secret: str | None,
                 heartbeat_interval: float = 5.0,
                 live_statuses: Callable[[], list[TaskStatus]] = list) -> None:
        self.master_url = master_url.rstrip("/")
        self.registration = registration
        self.heartbeat_interval = heartbeat_interval
        self.live_statuses = live_statuses
        self._client = httpx.AsyncClient(headers=auth_header(secret), timeout=5.0)
        self._outbox: asyncio.Queue[TaskStatus] = asyncio.Queue()
        self.registered = asyncio.Event()
        # Several masters (``--master zk://…``): the leader's URL arrives by leader_changed().
        self._leader_moved = False
        self._move_waiters: set[asyncio.Future] = set()

    @property
    def agent_id(self) -> str:
        return self.registration.agent_id

    async def register(self) -> None:
        """Retries until the master accepts; backs off up to 2 s between tries."""
        delay = 0.1
        while True:
            try:
                resp = await self._client.post(f"{self.master_url}/v1/agents",
                                               json=self.registration.model_dump())
                if resp.status_code == 200:
                    log.info("registered with %s as %s", self.master_url, self.agent_id)
                    self._leader_moved = False
                    for status in self.live_statuses():
                        self.send_status(status)
                    self.registered.set()
                    return
                log.error("master refused registration: %s %s", resp.status_code, resp.text)
            except httpx.HTTPError as exc:
                log.info("master %s not reachable yet: %s", self.master_url, exc)
            if await self._unless_leader_moves(asyncio.sleep(delay)) is MOVED:
                delay = 0.1
                continue
            delay = min(delay * 2, 2.0)

    def leader_changed(self, url: str) -> None:
        """Several masters: another master leads now (``control.agent.leader``). The agent
        registers with it, its statuses go there, and the view long-poll continues there from
        the version it had (a new leader's view is always newer)."""
        url = url.rstrip("/")
        if url == self.master_url:
            return
        log.info("the leading master is %s now (was %s)", url, self.master_url or "unknown")
        self.master_url = url
        self._leader_moved = True
        for waiter in list(self._move_waiters):
            if not waiter.done():
                waiter.set_result(None)

    async def _unless_leader_moves(self, request: Awaitable[T]) -> T | object:
        """The request's result, or ``MOVED`` (the request cancelled) when the leader moves first:
        a long-poll to a stopped or cut-off leader must not wait out its timeout."""
        moved = asyncio.get_running_loop().create_future()
        self._move_waiters.add(moved)
        task = asyncio.ensure_future(request)
        try:
            await asyncio.wait([task, moved], return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._move_waiters.discard(moved)
        if task.done():
            moved.cancel()
            return task.result()
        task.cancel()
        return MOVED

    async def reregister(self, registration: AgentRegistration) -> None:
        """New facts about this agent (its container networks): it registers again, which the
        master treats as an update. Before the first registration the new one is simply used."""
        self.registration = registration
        if self.registered.is_set():
            await self.register()

    def send_status(self, status: TaskStatus) -> None:
        self._outbox.put_nowait(status)

    async def _deliver(self) -> None:
        """Sends the outbox in order, as many statuses a request as are waiting (at most
        STATUS_BATCH); a batch is sent again until the master acknowledges it (Mesos' status
        update retries), so none is lost while the master is away or slow."""
        while True:
            batch = [await self._outbox.get()]
            while not self._outbox.empty() and len(batch) < STATUS_BATCH:
                batch.append(self._outbox.get_nowait())
            delay = 0.5
            while True:
                try:
                    resp = await self._client.post(f"{self.master_url}/v1/agents/{self.agent_id}/statuses",
                                                   json=[status.model_dump() for status in batch])
                    if resp.status_code < 500 and resp.status_code != 404:
                        if resp.status_code >= 400:
                            log.warning("master rejected %d statuses: %s %s", len(batch), resp.status_code,
                                        resp.text[:200])
                        break
                except httpx.HTTPError as exc:
                    log.info("%d statuses not delivered yet: %s", len(batch), exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _heartbeats(self) -> None:
        while True:
            await self._unless_leader_moves(asyncio.sleep(self.heartbeat_interval))
            if self._leader_moved:
                self._leader_moved = False
                self.registered.clear()
                await self.register()
                continue
            try:
                resp = await self._client.post(f"{self.master_url}/v1/agents/{self.agent_id}/heartbeat")
                if resp.status_code == 404:
                    self.registered.clear()
                    await self.register()
            except httpx.HTTPError as exc:
                log.warning("heartbeat failed: %s", exc)

    async def run(self) -> None:
        await self.register()
        await asyncio.gather(self._heartbeats(), self._deliver())

    async def watch_view(self, on_view: Callable[[ClusterView], None], wait: float = 20.0) -> None:
        """Long-polls the cluster view; calls ``on_view`` for every new version."""
        version = 0
        while True:
            try:
                resp = await self._unless_leader_moves(self._client.get(
                    f"{self.master_url}/v1/view", params={"since": version, "wait": wait}, timeout=wait + 5))
                if resp is MOVED:
                    continue
                assert isinstance(resp, httpx.Response)
                if resp.status_code == 200:
                    view = ClusterView.model_validate(resp.json())
                    if view.version != version:
                        version = view.version
                        on_view(view)
                    continue
                log.warning("view request: %s %s", resp.status_code, resp.text[:200])
            except (httpx.HTTPError, ValueError) as exc:
                log.info("master unreachable, keeping view %d: %s", version, exc)
            await asyncio.sleep(1.0)

    async def close(self) -> None:
        await self._client.aclose()
