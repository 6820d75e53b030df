"""The one way blocking kernel calls stay off the agent's event loop.

Each kernel-facing object owns a ``KernelThread`` and makes every blocking kernel call on it:
sync callers (reconcilers, tests, benchmarks) use ``call`` from any thread, coroutines ``await
run(...)`` and the loop goes on meanwhile.

Why a thread of its own rather than ``asyncio.to_thread`` or pyroute2's asyncio API everywhere:

* pyroute2 0.9's synchronous ``IPRoute`` drives an asyncio loop of its own in the calling thread
  and refuses a thread whose loop is already running (the agent's), so an ``IPRoute`` object must
  live on a thread without a loop; one thread also serialises every call, so no lock is needed.
* ``AsyncIPRoute`` on the agent's loop would decode every answer there: a dump of thousands of
  neighbours or routes is tens of milliseconds of Python the loop could not serve DNS in. It
  serves where a coroutine makes a handful of requests (``navstar.localnet``).
* The seams stay synchronous, so reconcilers are plain functions their tests call directly.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class KernelThread:
    """One named thread that runs blocking kernel calls, one at a time."""

    def __init__(self, name: str) -> None:
        self._ident = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name,
                                            initializer=self._remember)

    def _remember(self) -> None:
        self._ident = threading.get_ident()

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` on the thread and wait for it (directly when already on it, so calls nest)."""
        if threading.get_ident() == self._ident:
            return fn(*args, **kwargs)
        return self._executor.submit(fn, *args, **kwargs).result()

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` on the thread; the awaiting loop stays free meanwhile."""
        if threading.get_ident() == self._ident:
            return fn(*args, **kwargs)
        result: T = await asyncio.wrap_future(self._executor.submit(fn, *args, **kwargs))
        return result

    def close(self) -> None:
        """Wait for the call under way, then end the thread. Idempotent."""
        self._executor.shutdown(wait=True)


def on_kernel_thread(method: Callable[..., T]) -> Callable[..., T]:
    """Make a method of an object with a ``kernel_thread`` attribute run on that thread."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> T:
        thread: KernelThread = self.kernel_thread
        return thread.call(method, self, *args, **kwargs)

    return wrapper
