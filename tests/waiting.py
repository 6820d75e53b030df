"""Waiting for a condition instead of sleeping: the one place tests may sleep.

``wait_until`` polls ``condition`` until it returns something truthy (which it returns) or the
deadline passes (an AssertionError naming what was awaited and the last value or exception seen).
Deadlines are generous on purpose: they bound a hung test, not the speed of the code under test —
timing goals live in ``bench/``. ``wait_until_async`` is the same on an event loop.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

DEFAULT_TIMEOUT = 30.0


class _Deadline:
    """The deadline of one wait, and what was last seen before it passed."""

    def __init__(self, timeout: float, message: str) -> None:
        self.timeout, self.message = timeout, message
        self.at = time.monotonic() + timeout

    def check(self, last: object) -> None:
        if time.monotonic() >= self.at:
            raise AssertionError(f"timed out after {self.timeout}s waiting for {self.message}; last: {last!r}")


def wait_until(condition: Callable[[], T], timeout: float = DEFAULT_TIMEOUT, interval: float = 0.05,
               message: str = "the condition") -> T:
    deadline = _Deadline(timeout, message)
    while True:
        try:
            last = condition()
            if last:
                return last
        except Exception as exc:  # noqa: BLE001 — keep polling; report the last failure
            last = exc
        deadline.check(last)
        time.sleep(interval)


async def wait_until_async(condition: Callable[[], T | Awaitable[T]], timeout: float = DEFAULT_TIMEOUT,
                           interval: float = 0.01, message: str = "the condition") -> T:
    deadline = _Deadline(timeout, message)
    while True:
        try:
            last = condition()
            if inspect.isawaitable(last):
                last = await last
            if last:
                return last
        except Exception as exc:  # noqa: BLE001 — keep polling; report the last failure
            last = exc
        deadline.check(last)
        await asyncio.sleep(interval)
