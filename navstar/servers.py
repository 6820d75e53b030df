"""Runs several ASGI apps on one asyncio loop, with one shutdown signal for all of them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass

import uvicorn
from starlette.types import ASGIApp

log = logging.getLogger("navstar.servers")

SHUTDOWN_GRACE_SECONDS = 3.0


@dataclass(frozen=True)
class Listen:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str, default_host: str = "0.0.0.0") -> Listen:
        """``:8080``, ``8080``, ``1.2.3.4:8080`` → Listen."""
        host, _, port = text.rpartition(":") if ":" in text else ("", "", text)
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"bad listen address {text!r}: expected [host]:port")
        return cls(host or default_host, int(port))


class _QuietServer(uvicorn.Server):
    # The process owns signal handling (one handler stops every server), not each server.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(apps: list[tuple[ASGIApp, Listen]], background: list[Awaitable[None]] = ()) -> None:
    """Serves every app until SIGTERM/SIGINT; background coroutines run alongside."""
    servers = [
        # Streams (scheduler API subscriptions, event streams) never end by themselves: past the
        # grace period, shutdown cancels them instead of waiting forever.
        _QuietServer(uvicorn.Config(app, host=listen.host, port=listen.port, log_level="warning",
                                    lifespan="off", access_log=False,
                                    timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS))
        for app, listen in apps
    ]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    def on_signal(sig: signal.Signals) -> None:
        log.warning("stopping on %s", sig.name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, on_signal, sig)

    tasks = [asyncio.create_task(server.serve()) for server in servers]
    tasks += [asyncio.create_task(coro) for coro in background]
    stopper = asyncio.create_task(stop.wait())
    done, _pending = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
    for task in done:
        if task is not stopper and task.exception() is not None:
            log.error("component failed: %r", task.exception())
    for server in servers:
        server.should_exit = True
    for task in tasks:
        if not task.done() and task not in tasks[: len(servers)]:
            task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    stopper.cancel()
    failed = [t for t in done if t is not stopper and t.exception() is not None]
    if failed:
        raise SystemExit(1)
