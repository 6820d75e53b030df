"""What the leader's ports add for several masters (``guard`` installs both on each port).

- ``StoreGuard``: a state store that cannot write now (ZooKeeper below quorum, leadership
  lost, SQLite's directory read-only or its disk refusing writes) turns writes (POST/PUT/PATCH/
  DELETE: Marathon's, agents' registrations and statuses, scheduler calls) into 503 with a JSON
  reason *before* anything changes; a ``StoreUnavailable`` raised by any handler is a 503 too,
  never a 500. Reads keep answering from memory. Agents' heartbeats write nothing, so they are
  never refused (agents resend statuses until acknowledged). With a store that
  groups writes (``ZkStore.begin/flush/end``), what a write request changes is committed in one
  transaction just before its answer leaves (a failed commit answers 503 instead).
- ``LeaderRedirect``: ``/master/redirect`` answers 307 to this (leading) master, as Mesos'
  leader does; followers redirect to the leader (``control.http.follower``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from control.state import StoreUnavailable, write_refusal

WRITES = ("POST", "PUT", "PATCH", "DELETE")
# Writes that change no state: never refused (an agent refused its heartbeat would be
# unreachable; Admin Router's login and logout only read users and sign tokens).
STATELESS_WRITES = ("/heartbeat", "/acs/api/v1/auth/login", "/acs/api/v1/auth/logout")


async def _json(send: Send, status: int, body: dict[str, str], headers: list[tuple[bytes, bytes]]) -> None:
    raw = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": raw})


def unavailable_body(why: str) -> dict[str, str]:
    return {"message": f"the master cannot change its state now: {why}", "reason": why}


class StoreGuard:
    def __init__(self, app: ASGIApp, store: Callable[[], object]) -> None:
        self.app = app
        self.store = store

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        retry = [(b"retry-after", b"1")]
        store = self.store()
        grouped = scope["method"] in WRITES and hasattr(store, "begin")
        if scope["method"] in WRITES and not scope["path"].endswith(STATELESS_WRITES):
            why = write_refusal(store)
            if why is not None:
                await _json(send, 503, unavailable_body(why), retry)
                return
        if grouped:
            store.begin()       # type: ignore[attr-defined]
        started = False
        refused = False

        async def tracking(message: Message) -> None:
            nonlocal started, refused
            if refused:
                return      # the handler's answer was replaced by a 503
            if message["type"] == "http.response.start":
                if grouped:
                    try:
                        # Off the loop: other requests run (and stage) while this one commits.
                        await asyncio.to_thread(store.flush)    # type: ignore[attr-defined]
                    except StoreUnavailable as exc:
                        refused = True
                        started = True
                        await _json(send, 503, unavailable_body(str(exc)), retry)
                        return
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking)
        except StoreUnavailable as exc:
            if started:
                raise
            await _json(send, 503, unavailable_body(str(exc)), retry)
        finally:
            if grouped:
                try:
                    store.end()     # type: ignore[attr-defined]
                except StoreUnavailable:
                    pass            # the next write reads its keys back


class LeaderRedirect:
    def __init__(self, app: ASGIApp, address: Callable[[], str]) -> None:
        self.app = app
        self.address = address

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/master/redirect":
            await send({"type": "http.response.start", "status": 307,
                        "headers": [(b"location", f"http://{self.address()}".encode()), (b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        await self.app(scope, receive, send)
