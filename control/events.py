"""Marathon's event bus behind ``GET /v2/events`` (server-sent events).

Every event is a dict with ``eventType`` and ``timestamp`` (ISO 8601, like Marathon's). A slow
subscriber loses its oldest events rather than slowing the master down; one that asked for some
event types only (``?event_type=``) queues only those, so a burst of others never pushes them out.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator
from typing import Any

QUEUE_LIMIT = 10_000


def iso_now(now: float | None = None) -> str:
    when = dt.datetime.fromtimestamp(now, dt.UTC) if now is not None else dt.datetime.now(dt.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def parse_iso(text: str) -> float:
    """``iso_now``'s output back to seconds since the epoch."""
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC).timestamp()


class EventBus:
    def __init__(self) -> None:
        self._subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
        self._wants: dict[asyncio.Queue[dict[str, Any]], set[str] | None] = {}
        self.published = 0

    def publish(self, event_type: str, **fields: Any) -> dict[str, Any]:
        event = {"eventType": event_type, "timestamp": iso_now(), **fields}
        self.published += 1
        for queue in list(self._subscribers):
            wants = self._wants.get(queue)
            if wants is not None and event_type not in wants:
                continue
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(event)
        return event

    def subscribe(self, event_types: set[str] | None = None) -> asyncio.Queue[dict[str, Any]]:
        """A queue of every event published from now on (of ``event_types`` only, when given)."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_LIMIT)
        self._subscribers.add(queue)
        self._wants[queue] = set(event_types) if event_types else None
        return queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self._subscribers.discard(queue)
        self._wants.pop(queue, None)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    async def stream(self, event_types: set[str] | None = None, keepalive: float = 15.0,
                     remote: str = "") -> AsyncIterator[str]:
        """SSE frames: ``event: <type>\\ndata: <json>\\n\\n``; comments keep idle proxies open."""
        queue = self.subscribe(event_types)
        try:
            attached = {"eventType": "event_stream_attached", "timestamp": iso_now(), "remoteAddress": remote}
            if not event_types or "event_stream_attached" in event_types:
                yield _frame(attached)
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), keepalive)
                except TimeoutError:
                    yield ":\n\n"
                    continue
                if not event_types or event["eventType"] in event_types:
                    yield _frame(event)
        finally:
            self.unsubscribe(queue)


def _frame(event: dict[str, Any]) -> str:
    return f"event: {event['eventType']}\ndata: {json.dumps(event, separators=(',', ':'))}\n\n"
