"""The agent's launch queue: launches are acknowledged at once and started off the event loop.

```
POST /v1/tasks [launch…] ──► Launcher.submit ──► per task: accepted | known | busy   (answered now)
                                 │ accepted: queued (TASK_STAGING in GET /v1/tasks)
                                 ▼
                 WORKERS threads of its own ──► Executor.launch ──► statuses
```

- Idempotent by task id: a task queued, starting, running, or killed before its launch arrived is
  ``known`` and not queued again (the master resends launches it did not see acknowledged).
- Back-pressure: with ``capacity`` launches queued the rest is answered ``busy``; the master keeps
  those tasks staging and offers them again later. Nothing waits for a start to answer.
- A queued task that is killed is dropped from the queue and reported ``TASK_KILLED``.
- Reconciliation (``statuses``) sees a task from its launch until the executor holds it: queued,
  then in a worker's hands while it starts (it leaves those only once the executor lists it), so
  the master never finds an acknowledged launch missing and replaces it (a duplicate).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
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
        self._in_hand: dict[str, TaskLaunch] = {}     # taken by a worker, being started
        # Worker threads of their own take from the queue: a busy event loop (a large view being
        # applied) never holds a start back, and starts never queue behind other off-loop work.
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self.started = 0

    def submit(self, launches: list[TaskLaunch]) -> dict[str, Outcome]:
        """Queues what is new, on the loop; returns each task's outcome. Never blocks on a start."""
        self._ensure_workers()
        outcomes: dict[str, Outcome] = {}
        with self._lock:
            for launch in launches:
                task_id = launch.task_id
                if task_id in self._queued or task_id in self._in_hand or self.executor.knows(task_id):
                    outcomes[task_id] = "known"
                elif len(self._queued) >= self.capacity:
                    outcomes[task_id] = "busy"
                else:
                    self._queued[task_id] = launch
                    outcomes[task_id] = "accepted"
            self._ready.notify_all()
        return outcomes

    def kill(self, task_id: str) -> bool:
        """Drops a queued task (reported TASK_KILLED); False when it is not queued."""
        with self._lock:
            if self._queued.pop(task_id, None) is None:
                return False
        self.executor.on_status(TaskStatus(task_id=task_id, state="TASK_KILLED", timestamp=time.time(),
                                           message="killed before it started"))
        return True

    def statuses(self) -> list[TaskStatus]:
        """Queued and starting tasks as TASK_STAGING (what reconciliation must know is in flight).
        Read it before the executor's statuses: a task leaves it only once the executor has it."""
        now = time.time()
        with self._lock:
            queued = [*self._queued.items(), *self._in_hand.items()]
        return [TaskStatus(task_id=task_id, state="TASK_STAGING", timestamp=now, ports=launch.ports)
                for task_id, launch in queued]

    @property
    def queued(self) -> int:
        return len(self._queued)

    def _ensure_workers(self) -> None:
        if self._threads:
            return
        self._loop = asyncio.get_running_loop()
        self._threads = [threading.Thread(target=self._work, name=f"launch-{n}", daemon=True)
                         for n in range(self.workers)]
        for thread in self._threads:
            thread.start()

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._queued and not self._closed:
                    self._ready.wait()
                if self._closed:
                    return
                task_id, launch = self._queued.popitem(last=False)
                self._in_hand[task_id] = launch
            try:
                self.executor.launch(launch)
                self.started += 1
            except Exception:  # noqa: BLE001 — one bad launch never stops the queue
                log.exception("launch of %s", launch.task_id)
                continue
            finally:
                with self._lock:
                    self._in_hand.pop(task_id, None)
            if self.on_started is not None and launch.task_id in self.executor.tasks and self._loop is not None:
                try:
                    self._loop.call_soon_threadsafe(self.on_started, launch)
                except RuntimeError:
                    return      # the loop is gone: the agent is stopping

    async def close(self) -> None:
        with self._lock:
            self._closed = True
            self._ready.notify_all()
        threads, self._threads = self._threads, []
        for thread in threads:
            await asyncio.to_thread(thread.join, 10)
