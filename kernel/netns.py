"""Running a piece of work inside a named network namespace without moving the process."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TypeVar, cast

T = TypeVar("T")


def in_netns(netns: str | None, work: Callable[[], T]) -> T:
    """Run ``work`` in a throwaway thread that has joined ``/run/netns/<netns>`` (None: here).

    setns() moves only the calling thread, so the caller and the rest of the process stay where
    they are; sockets opened by ``work`` stay in that namespace for good. A missing namespace
    raises FileNotFoundError."""
    if netns is None:
        return work()
    from pyroute2.netns import setns

    result: list[object] = []

    def target() -> None:
        try:
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
        except OSError as exc:
            result.append(type(exc)(exc.errno, f"network namespace {netns!r}: {exc.strerror}"))
            return
        try:
            setns(fd)
            result.append(work())
        except BaseException as exc:   # handed to the caller's thread
            result.append(exc)
        finally:
            os.close(fd)

    thread = threading.Thread(target=target, name=f"netns-{netns}")
    thread.start()
    thread.join()
    if isinstance(result[0], BaseException):
        raise result[0]
    return cast(T, result[0])
