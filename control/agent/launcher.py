"""The agent's launch queue: launches are acknowledged at once and started off the event loop.

```
POST /v1/tasks [launch…] ──► Launcher.submit ──► per task: accepted | known | busy   (answered now)
                                 │ accepted: queued (TASK_STAGING in GET /v1/tasks)
                                 ▼
                 WORKERS coroutines ──► own thread pool: Executor.launch ──► statuses
```

- Idempotent by task id: a task queued, starting, running, or killed before its launch arrived is
  ``known`` and not queued again (the master resends launches it did not see acknowledged).
- Back-pressure: with ``capacity`` launches queued the rest is answered ``busy``; the master keeps
  those tasks staging and offers them again later. Nothing waits for a start to answer.
- A queued task that is killed is dropped from the queue and reported ``TASK_KILLED``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

from control.agent.executor import Executor
from control.protocol import TaskLaunch, TaskStatus

log = logging.getLogger("navstar.agent.launcher")

Outcome = Literal["accepted", "known", "busy"]
CAPACITY = 1024
WORKERS = 2


class Launcher:
    def __init__(self, executor: Executor, capacity: int = CAPACITY, workers: int = WORKERS,
                 on_started: Callable[[TaskLaunch], None] | None = None) -> None:
        """``on_started(launch)`` runs on the loop after a task started (health checks)."""
        self.executor = executor
        self.on_started = on_started
        self.capacity = capacity
        self.workers = workers
        self._queued: OrderedDict[str, TaskLaunch] = OrderedDict()
        self._ready: asyncio.Event | None = None
        self._running: list[asyncio.Task] = []
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="launch")
        self.started = 0

    def submit(self, launches: list[TaskLaunch]) -> dict[str, Outcome]:
        """Queues what is new, on the loop; returns each task's outcome. Never blocks."""
        self._ensure_workers()
        outcomes: dict[str, Outcome] = {}
        for launch in launches:
            task_id = launch.task_id
            if task_id in self._queued or self.executor.knows(task_id):
                outcomes[task_id] = "known"
            elif len(self._queued) >= self.capacity:
                outcomes[task_id] = "busy"
            else:
                self._queued[task_id] = launch
                outcomes[task_id] = "accepted"
        if self._ready is not None and self._queued:
            self._ready.set()
        return outcomes

    def kill(self, task_id: str) -> bool:
        """Drops a queued task (reported TASK_KILLED); False when it is not queued."""
        if self._queued.pop(task_id, None) is None:
            return False
        self.executor.on_status(TaskStatus(task_id=task_id, state="TASK_KILLED", timestamp=time.time(),
                                           message="killed before it started"))
        return True

    def statuses(self) -> list[TaskStatus]:
        """Queued tasks as TASK_STAGING (what reconciliation must know is in flight)."""
        now = time.time()
        return [TaskStatus(task_id=task_id, state="TASK_STAGING", timestamp=now, ports=launch.ports)
                for task_id, launch in self._queued.items()]

    @property
    def queued(self) -> int:
        return len(self._queued)

    def _ensure_workers(self) -> None:
        if self._running and not all(task.done() for task in self._running):
            return
        self._ready = asyncio.Event()
        loop = asyncio.get_running_loop()
        self._running = [loop.create_task(self._work()) for _ in range(self.workers)]

    async def _work(self) -> None:
        assert self._ready is not None
        while True:
            if not self._queued:
                self._ready.clear()
                await self._ready.wait()
                continue
            _task_id, launch = self._queued.popitem(last=False)
            try:
                # A pool of its own: starts never queue behind the agent's other off-loop work.
                await asyncio.get_running_loop().run_in_executor(self._pool, self.executor.launch, launch)
                self.started += 1
                if self.on_started is not None and launch.task_id in self.executor.tasks:
                    self.on_started(launch)
            except Exception:  # noqa: BLE001 — one bad launch never stops the queue
                log.exception("launch of %s", launch.task_id)

    async def close(self) -> None:
        for task in self._running:
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)
        self._pool.shutdown(wait=False)
