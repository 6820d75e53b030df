"""The launch queue and backoff: which apps wait for instances, since when, why, and how long a
crash-looping app must wait before its next launch.

- An app with launch demand has an entry (``/v2/queue``): its count, Marathon's reject reasons
  from the last offers, and a sentence per agent saying why nothing fits.
- A task that ends without being asked to makes its app wait ``backoffSeconds × backoffFactor^n``
  (at most ``maxLaunchDelaySeconds``); a task that ran ``STABLE_RUN_SECONDS`` resets the delay.
  Backoff is in the state store (kind ``meta``, key ``backoff:<app id>``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, Field

from control.events import iso_now
from control.marathon_models import AppDefinition
from control.state import StateStore
from control.task_record import TaskRecord

# A task that ran this long before failing resets its app's backoff: it was not a crash loop.
STABLE_RUN_SECONDS = 60.0
BACKOFF_KEY = "backoff:"


class Backoff(BaseModel):
    delay: float = 0.0                  # the next failure waits this long (0: the app's backoffSeconds)
    launch_after: float = 0.0


class QueueEntry(BaseModel):
    app_id: str
    count: int
    since: float
    reasons: dict[str, int] = Field(default_factory=dict)   # Marathon's reject reason → offers
    detail: str = ""


class LaunchQueue:
    def __init__(self, store: StateStore, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock
        self.entries: dict[str, QueueEntry] = {}
        self.last_failure: dict[str, dict[str, Any]] = {}   # app id → Marathon's lastTaskFailure
        self._backoff: dict[str, Backoff] = {}

    def load(self) -> None:
        """Reads the apps' backoff back after a restart."""
        for key, raw in self._store.items("meta"):
            if key.startswith(BACKOFF_KEY):
                self._backoff[key[len(BACKOFF_KEY):]] = Backoff.model_validate(raw)

    def delay_left(self, app_id: str) -> float:
        """Seconds until the app may launch again (0 when it may now)."""
        backoff = self._backoff.get(app_id)
        return max(0.0, backoff.launch_after - self._clock()) if backoff else 0.0

    def ready(self, demand: dict[str, int]) -> dict[str, int]:
        """The part of ``demand`` (app id → instances) whose backoff has passed."""
        return {app_id: n for app_id, n in demand.items() if self.delay_left(app_id) <= 0}

    def refresh(self, demand: dict[str, int], ready: dict[str, int]) -> None:
        """Entries become exactly the apps with demand; backed-off ones say how long they wait."""
        for app_id in list(self.entries):
            if app_id not in demand:
                del self.entries[app_id]
        for app_id, count in demand.items():
            entry = self.entries.get(app_id)
            if entry is None:
                entry = self.entries[app_id] = QueueEntry(app_id=app_id, count=count, since=self._clock())
            entry.count = count
            if app_id not in ready:
                failure = self.last_failure.get(app_id, {}).get("message")
                entry.detail = (f"waiting {self.delay_left(app_id):.1f}s (backoff after a failed task"
                                + (f": {failure})" if failure else ")"))

    def explain(self, app_id: str, reasons: dict[str, int], detail: str) -> None:
        """Records why the last offers did not take the app's next task (no-op when not queued)."""
        entry = self.entries.get(app_id)
        if entry is not None:
            entry.reasons = reasons
            entry.detail = detail

    def failed(self, app: AppDefinition, task: TaskRecord, now: float) -> None:
        """A task of ``app`` ended unasked: the app backs off and remembers the failure."""
        backoff = self._backoff.setdefault(app.id, Backoff())
        ran = (now - task.started_at) if task.started_at else 0.0
        if backoff.delay <= 0 or ran >= STABLE_RUN_SECONDS:
            backoff.delay = app.backoff_seconds
        backoff.launch_after = now + backoff.delay
        backoff.delay = min(backoff.delay * app.backoff_factor, app.max_launch_delay_seconds)
        self._store.put("meta", BACKOFF_KEY + app.id, backoff.model_dump())
        self.last_failure[app.id] = {
            "appId": app.id, "host": task.hostname, "message": task.message, "state": task.state,
            "taskId": task.task_id, "timestamp": iso_now(now), "version": task.version, "slaveId": task.agent_id}

    def reset_backoff(self, app_id: str) -> None:
        """A new config may launch at once. Idempotent."""
        self._backoff.pop(app_id, None)
        self._store.delete("meta", BACKOFF_KEY + app_id)

    def forget(self, app_id: str) -> None:
        """The app is gone: no backoff, no entry. Idempotent."""
        self.reset_backoff(app_id)
        self.entries.pop(app_id, None)
