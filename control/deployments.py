"""Deployments: one per app change (start, scale, restart, stop), Marathon's plan of one step.

A deployment starts when an app is stored or removed and supersedes the app's running ones
(``deployment_failed``); it succeeds (``deployment_success``) when the scheduler's check says the
app has converged. While one runs, the app is locked: changes answer 409 unless forced. Every
deployment is in the state store (kind ``deployments``), so a restarted master continues it.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel

from control.events import EventBus
from control.marathon_models import AppLocked
from control.state import StateStore

log = logging.getLogger("navstar.scheduler")

Action = Literal["StartApplication", "ScaleApplication", "RestartApplication", "StopApplication"]


class Deployment(BaseModel):
    id: str
    version: str
    app_id: str
    action: Action
    started_at: float

    def to_marathon(self) -> dict[str, Any]:
        action = {"action": self.action, "app": self.app_id, "readinessCheckResults": []}
        return {"id": self.id, "version": self.version, "affectedApps": [self.app_id], "affectedPods": [],
                "steps": [{"actions": [{"action": self.action, "app": self.app_id}]}],
                "currentActions": [action], "currentStep": 1, "totalSteps": 1}


class Deployments:
    def __init__(self, store: StateStore, events: EventBus, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._events = events
        self._clock = clock
        self._running: dict[str, Deployment] = {}
        self._by_app: dict[str, dict[str, Deployment]] = {}    # app id → its running deployments

    def load(self) -> None:
        """Reads the running deployments back after a restart."""
        for _id, raw in self._store.items("deployments"):
            deployment = Deployment.model_validate(raw)
            self._running[deployment.id] = deployment
            self._by_app.setdefault(deployment.app_id, {})[deployment.id] = deployment

    def all(self) -> list[Deployment]:
        return list(self._running.values())

    def for_app(self, app_id: str) -> list[Deployment]:
        return list(self._by_app.get(app_id, {}).values())

    def check_lock(self, app_id: str, force: bool = False) -> None:
        """Raises ``AppLocked`` (Marathon's 409) while the app has a deployment, unless ``force``."""
        running = self.for_app(app_id)
        if running and not force:
            raise AppLocked(app_id, [d.id for d in running])

    def supersede(self, app_id: str) -> None:
        """Ends the app's running deployments as failed (``deployment_failed``). Idempotent."""
        for old in self.for_app(app_id):
            self._finish(old, success=False)

    def start(self, app_id: str, action: Action, version: str) -> Deployment:
        """Starts a deployment for the app (call ``supersede`` first when it replaces others)."""
        deployment = Deployment(id=str(uuid.uuid4()), version=version, app_id=app_id, action=action,
                                started_at=self._clock())
        self._running[deployment.id] = deployment
        self._by_app.setdefault(app_id, {})[deployment.id] = deployment
        self._store.put("deployments", deployment.id, deployment.model_dump())
        self._events.publish("deployment_info", plan=deployment.to_marathon(),
                             currentStep={"actions": [{"action": action, "app": app_id}]})
        return deployment

    def finish_converged(self, converged: Callable[[Deployment], bool]) -> None:
        """Ends, as successful, every deployment for which ``converged`` says so. Idempotent."""
        for deployment in list(self._running.values()):
            if converged(deployment):
                self._finish(deployment, success=True)

    def _finish(self, deployment: Deployment, success: bool) -> None:
        self._running.pop(deployment.id, None)
        siblings = self._by_app.get(deployment.app_id, {})
        siblings.pop(deployment.id, None)
        if not siblings:
            self._by_app.pop(deployment.app_id, None)
        self._store.delete("deployments", deployment.id)
        kind = "deployment_success" if success else "deployment_failed"
        self._events.publish(kind, id=deployment.id, plan=deployment.to_marathon())
        log.info("deployment %s (%s %s) %s", deployment.id, deployment.action, deployment.app_id,
                 "succeeded" if success else "was superseded")
