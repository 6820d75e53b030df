"""Deployments: Marathon's plans — steps of actions on apps, run one step at a time.

A deployment is a list of steps; each step is a list of actions (``StartApplication``,
``ScaleApplication``, ``RestartApplication``, ``StopApplication``) on apps. A step's actions are
applied (the app stored or dropped, through the ``apply`` hook the scheduler sets) when the step
starts; the next step starts once every action of this one has converged (the scheduler's
check: every task on the app's config and ready, or none left for a stop). A single app change
is a plan of one step; a group change is ordered by dependencies (``control.deployment_plan``).

```
start(steps, original) ─► step 1 applied ─► advance(done) each cycle ─► step 2 applied ─► … ─► success
supersede(apps): later steps of the old plan for other apps applied at once, the old plan failed
cancel(id): the same for every app (``DELETE /v2/deployments/{id}?force=true``)
original: each affected app's definition before the plan (None: absent) — what a rollback restores
```

While a deployment runs, its apps are locked: changes answer 409 unless forced. Every deployment
is in the state store (kind ``deployments``), so a restarted master continues it.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from control.events import EventBus
from control.marathon_models import AppLocked
from control.state import StateStore

log = logging.getLogger("navstar.scheduler")

Action = Literal["StartApplication", "ScaleApplication", "RestartApplication", "StopApplication"]


class PlanAction(BaseModel):
    action: Action
    app_id: str
    app: dict[str, Any] | None = None      # the definition stored when the step starts (None: a stop)

    def to_marathon(self) -> dict[str, Any]:
        return {"action": self.action, "app": self.app_id}


class Deployment(BaseModel):
    id: str
    version: str
    started_at: float
    steps: list[list[PlanAction]]
    current_step: int = 0                  # index of the step running (len(steps): done)
    original: dict[str, dict[str, Any] | None] = Field(default_factory=dict)
    original_groups: dict[str, dict[str, Any] | None] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _single_app_record(cls, raw: Any) -> Any:
        # Deployments stored before plans had steps: one app, one action.
        if isinstance(raw, dict) and "steps" not in raw and "app_id" in raw:
            raw = {k: v for k, v in raw.items() if k not in ("app_id", "action")} | {
                "steps": [[{"action": raw.get("action", "RestartApplication"), "app_id": raw["app_id"]}]]}
        return raw

    @property
    def affected_apps(self) -> list[str]:
        seen: dict[str, None] = {}
        for step in self.steps:
            for action in step:
                seen.setdefault(action.app_id, None)
        return list(seen)

    @property
    def app_id(self) -> str:
        """The first affected app (a single app's plan: its app)."""
        apps = self.affected_apps
        return apps[0] if apps else ""

    @property
    def action(self) -> str:
        return self.steps[0][0].action if self.steps and self.steps[0] else "StartApplication"

    @property
    def current_actions(self) -> list[PlanAction]:
        return self.steps[self.current_step] if self.current_step < len(self.steps) else []

    def to_marathon(self) -> dict[str, Any]:
        return {"id": self.id, "version": self.version, "affectedApps": self.affected_apps, "affectedPods": [],
                "steps": [{"actions": [a.to_marathon() for a in step]} for step in self.steps],
                "currentActions": [a.to_marathon() | {"readinessCheckResults": []} for a in self.current_actions],
                "currentStep": min(self.current_step + 1, len(self.steps)), "totalSteps": len(self.steps)}


class Deployments:
    def __init__(self, store: StateStore, events: EventBus, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._events = events
        self._clock = clock
        self._running: dict[str, Deployment] = {}
        self._by_app: dict[str, dict[str, Deployment]] = {}    # app id → its running deployments
        # Applies one action (stores or drops its app); the scheduler sets it.
        self.apply: Callable[[PlanAction], None] = lambda _action: None

    def load(self) -> None:
        """Reads the running deployments back after a restart (their current step was applied)."""
        for _id, raw in self._store.items("deployments"):
            self._register(Deployment.model_validate(raw))

    def _register(self, deployment: Deployment) -> None:
        self._running[deployment.id] = deployment
        for app_id in deployment.affected_apps:
            self._by_app.setdefault(app_id, {})[deployment.id] = deployment

    def all(self) -> list[Deployment]:
        return list(self._running.values())

    def get(self, deployment_id: str) -> Deployment | None:
        return self._running.get(deployment_id)

    def for_app(self, app_id: str) -> list[Deployment]:
        return list(self._by_app.get(app_id, {}).values())

    def for_apps(self, app_ids: Iterable[str]) -> list[Deployment]:
        found: dict[str, Deployment] = {}
        for app_id in app_ids:
            for deployment in self.for_app(app_id):
                found[deployment.id] = deployment
        return list(found.values())

    def check_lock(self, app_ids: str | Iterable[str], force: bool = False) -> None:
        """Raises ``AppLocked`` (Marathon's 409, naming the deployments) while any of the apps has
        a deployment, unless ``force``."""
        ids = [app_ids] if isinstance(app_ids, str) else list(app_ids)
        running = self.for_apps(ids)
        if running and not force:
            locked = next(a for a in ids if self.for_app(a))
            raise AppLocked(locked, [d.id for d in running])

    def check_create(self, app_id: str, force: bool = False) -> None:
        """Raises ``AppLocked`` (409) for a new app that a running plan will store at a later
        step (it exists for that plan already), unless ``force``."""
        pending = [d for d in self.for_app(app_id) if any(
            a.app_id == app_id and a.app is not None for step in d.steps[d.current_step + 1:] for a in step)]
        if pending and not force:
            raise AppLocked(app_id, [d.id for d in pending])

    def supersede(self, app_ids: str | Iterable[str]) -> None:
        """Ends the deployments touching these apps as failed (``deployment_failed``); their
        pending actions on other apps are applied at once (the target they promised). Idempotent."""
        ids = {app_ids} if isinstance(app_ids, str) else set(app_ids)
        for old in self.for_apps(ids):
            self._flush(old, skip=ids)
            self._finish(old, success=False)

    def cancel(self, deployment_id: str) -> Deployment:
        """Stops a deployment without a rollback (``?force=true``): the apps keep the target it
        was heading for, reached without waiting. Raises ``KeyError`` for an unknown id."""
        deployment = self._running[deployment_id]
        self._flush(deployment, skip=set())
        self._finish(deployment, success=False)
        return deployment

    def start(self, steps: list[list[PlanAction]], original: dict[str, dict[str, Any] | None], version: str,
              original_groups: dict[str, dict[str, Any] | None] | None = None) -> Deployment:
        """Starts a plan (call ``supersede`` first for the apps it takes over) and applies its first
        step. Empty steps are dropped; a plan with none finishes at the next ``advance``."""
        deployment = Deployment(id=str(uuid.uuid4()), version=version, started_at=self._clock(),
                                steps=[step for step in steps if step], original=original,
                                original_groups=original_groups or {})
        self._register(deployment)
        self._store.put("deployments", deployment.id, deployment.model_dump())
        self._events.publish("deployment_info", plan=deployment.to_marathon(),
                             currentStep={"actions": [a.to_marathon() for a in deployment.current_actions]})
        for action in deployment.current_actions:
            self.apply(action)
        return deployment

    def advance(self, done: Callable[[PlanAction], bool]) -> None:
        """Moves every deployment whose current step has converged to its next step (applied),
        and ends, as successful, those past their last. Idempotent."""
        for deployment in list(self._running.values()):
            moved = False
            while deployment.current_step < len(deployment.steps) and \
                    all(done(a) for a in deployment.current_actions):
                self._events.publish("deployment_step_success", plan=deployment.to_marathon(),
                                     currentStep={"actions": [a.to_marathon() for a in deployment.current_actions]})
                deployment.current_step += 1
                moved = True
                for action in deployment.current_actions:
                    self.apply(action)
            if deployment.current_step >= len(deployment.steps):
                self._finish(deployment, success=True)
            elif moved:
                self._store.put("deployments", deployment.id, deployment.model_dump())
                log.info("deployment %s: step %d of %d (%s)", deployment.id, deployment.current_step + 1,
                         len(deployment.steps), ", ".join(f"{a.action} {a.app_id}" for a in deployment.current_actions))

    def finish_converged(self, converged: Callable[[Deployment], bool]) -> None:
        """Ends, as successful, every deployment for which ``converged`` says so. Idempotent."""
        for deployment in list(self._running.values()):
            if converged(deployment):
                self._finish(deployment, success=True)

    def _flush(self, deployment: Deployment, skip: set[str]) -> None:
        for step in deployment.steps[deployment.current_step + 1:]:
            for action in step:
                if action.app_id not in skip:
                    self.apply(action)

    def _finish(self, deployment: Deployment, success: bool) -> None:
        self._running.pop(deployment.id, None)
        for app_id in deployment.affected_apps:
            siblings = self._by_app.get(app_id, {})
            siblings.pop(deployment.id, None)
            if not siblings:
                self._by_app.pop(app_id, None)
        self._store.delete("deployments", deployment.id)
        kind = "deployment_success" if success else "deployment_failed"
        self._events.publish(kind, id=deployment.id, plan=deployment.to_marathon())
        log.info("deployment %s (%s) %s", deployment.id,
                 ", ".join(f"{a.action} {a.app_id}" for step in deployment.steps for a in step),
                 "succeeded" if success else "ended unfinished")
