"""KernelThread: blocking calls run on its one thread; coroutines await them with the loop free."""

from __future__ import annotations

import asyncio
import threading

from kernel.offloop import KernelThread, on_kernel_thread


class Owner:
    def __init__(self) -> None:
        self.kernel_thread = KernelThread("test-kernel")

    @on_kernel_thread
    def where(self) -> str:
        return threading.current_thread().name

    @on_kernel_thread
    def nested(self) -> str:
        return self.where()          # already on the thread: runs directly instead of deadlocking


def test_calls_run_on_the_thread_and_nest() -> None:
    owner = Owner()
    try:
        assert owner.where().startswith("test-kernel") and owner.nested().startswith("test-kernel")
    finally:
        owner.kernel_thread.close()


def test_run_leaves_the_loop_free_while_the_call_blocks() -> None:
    thread, release = KernelThread("test-kernel"), threading.Event()

    async def main() -> list[str]:
        order: list[str] = []
        blocked = asyncio.ensure_future(thread.run(lambda: release.wait(10) and order.append("call")))
        await asyncio.sleep(0)
        order.append("loop")          # the loop ran on while the call waited
        release.set()
        await blocked
        return order

    try:
        assert asyncio.run(main()) == ["loop", "call"]
    finally:
        thread.close()
