"""The Marathon scheduler: apps → tasks through DRF offers, and tasks' lives after launch.

One ``cycle(now)`` (every second, and whenever something changes) does, per app:

```
desired (instances, config version) ─┐
tasks (state, health, version) ──────┴─► plan: kills (scale down, rolling upgrade, orphans)
                                              + launch demand (gated by the app's backoff)
demand ─► revive/suppress ─► Allocator.allocate ─► offers (every agent, least loaded first,
          shuffled) ─► match (resources, ports, constraints), spread over the offers ─►
          accept/decline ─► TASK_STAGING ─► one AgentClient.launch_batch per agent
statuses from agents ─► on_status ─► task state, health, events; terminal → release, backoff
deployments ─► done when every task runs the app's config and is ready (running + healthy)
```

The launch protocol cannot thrash: a task is created once, with its id, and stays TASK_STAGING
until its agent reports it. A launch whose answer is lost or late is sent again under the same id
(agents start a task id at most once); an agent that is busy says so and the launch waits. Only a
reconciliation proves a launched task absent (TASK_LOST, then replaced). A task an agent reports
that the master does not know is killed only when a later reconciliation round still finds it
unknown: a report is never enough.

The coordinator: it owns apps and tasks (written through to the state store, ``control.state``,
on every change; the cluster view and Mesos state read them) and the plan, kills, launches,
statuses and reconciliation. It hands the rest to one module per concern: ``deployments``
(plans and the 409 lock), ``launch_queue`` (the queue and backoff), ``matching`` (offers →
placements, by ``placement``'s rules). No I/O but the ``AgentClient`` seam and the store.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from cluster.tasks import TERMINAL_STATES as TERMINAL
from cluster.view import TaskPort
from control.agent_client import AgentAddress, AgentClient, AgentUnavailable, LaunchAnswer
from control.deployments import Action, Deployment, Deployments, PlanAction
from control.drf import Allocator, Offer
from control.events import EventBus, iso_now
from control.launch_queue import LaunchQueue
from control.marathon_models import AppDefinition, marathon_task_name, marathon_task_prefix, task_protocol
from control.matching import Placement, agent_slots, explain, fill_offer, framework_for
from control.placement import AgentSlot, task_resources
from control.protocol import HealthCheckSpec, TaskLaunch, TaskStatus
from control.registry import AgentRecord, AgentRegistry
from control.state import StateStore, write_refusal
from control.task_record import TaskRecord

log = logging.getLogger("navstar.scheduler")

# Killed tasks whose agent never confirms are asked again after their grace period plus this.
KILL_RETRY_SECONDS = 5.0
COMPLETED_KEEP = 200
# Marathon's task_launch_timeout: a task not running by then is killed and replaced.
LAUNCH_TIMEOUT_SECONDS = 300.0
# An unacknowledged launch is sent again (same task id) after this, doubling up to the maximum.
LAUNCH_RESEND_SECONDS = 2.0
LAUNCH_RESEND_MAX_SECONDS = 30.0
# An agent that answered busy is offered the launch again after this.
BUSY_RETRY_SECONDS = 0.5
# At most this many launches go to one agent in one request.
LAUNCH_BATCH = 256
# A task an agent reports but the master does not know is reconciled again after this, and killed
# if still unknown then.
ORPHAN_CONFIRM_SECONDS = 2.0
# A reconciliation the agent did not answer is asked again after this (while it is reachable).
RECONCILE_RETRY_SECONDS = 2.0
RECONCILE_RETRIES = 10
# How finely a burst is spread over the offers of one cycle (rounds over the offers).
SPREAD_ROUNDS = 8


class Guests(Protocol):
    """The other frameworks (v1 scheduler API, ``control.frameworks``): Marathon routes their
    tasks' statuses and reconciliation to them, hands them their DRF offers, and counts their
    tasks' host ports."""

    def owns(self, task_id: str) -> bool: ...
    async def on_status(self, agent_id: str, status: TaskStatus) -> str: ...
    def reconciled(self, agent_id: str, reported: set[str], asked_at: float) -> None: ...
    def wants_offers(self) -> bool: ...
    def take_offers(self, offers: list[Offer], now: float) -> list[Offer]: ...
    def framework_tasks(self) -> Iterable[TaskRecord]: ...


class Scheduler:
    def __init__(self, registry: AgentRegistry, allocator: Allocator, agents: AgentClient, store: StateStore,
                 events: EventBus, clock: Callable[[], float] = time.time, rng: random.Random | None = None,
                 on_change: Callable[[], None] = lambda: None) -> None:
        self.registry = registry
        self.allocator = allocator
        self.agents = agents
        self.store = store
        self.events = events
        self.clock = clock
        self.rng = rng or random.Random()
        self.on_change = on_change      # the cluster view's version bump
        # Marathon's secrets: an app's env {"VAR": {"secret": "<name>"}} with secrets {"<name>":
        # {"source": "<source>"}} gets this callable's value for <source> (None: the variable is left out).
        self.secret_source: Callable[[str], str | None] = lambda _source: None
        self.apps: dict[str, AppDefinition] = {}
        self.tasks: dict[str, TaskRecord] = {}
        self._by_app: dict[str, dict[str, TaskRecord]] = {}   # app id → its tasks (index of self.tasks)
        self.completed: list[TaskRecord] = []
        self.deployments = Deployments(store, events, clock)
        self.deployments.apply = self.apply_action
        self.queue = LaunchQueue(store, clock)
        self.unplaceable: set[str] = set()     # apps whose demand found no place in the last cycle
        self.frameworks: set[str] = set()
        self.wake = asyncio.Event()
        self.paused_by: str | None = None     # why the cycle waits (the store refuses writes)
        self.offers_accepted = 0
        self.offers_declined = 0
        self.last_cycle_seconds = 0.0
        self._pending_io: set[asyncio.Task] = set()
        self._cycle_observers: list[Callable[[float], None]] = []
        self._launching: set[str] = set()      # agents with a launch request in flight
        # (agent, task id) reported but unknown → the agent's reconciliation round it was first
        # seen in; killed when a later round (asked after that) still finds it unknown.
        self._suspects: dict[tuple[str, str], int] = {}
        self._rounds: dict[str, int] = {}      # agent → reconciliation rounds started
        self._reconciling: set[str] = set()    # agents with a confirming reconciliation due
        self._reconcile_retry: set[str] = set()  # agents whose reconciliation failed, asked again
        self._reconcile_tries: dict[str, int] = {}
        self.reconcile_retry_seconds = RECONCILE_RETRY_SECONDS
        self.orphan_confirm_seconds = ORPHAN_CONFIRM_SECONDS
        self.unknown_killed = 0
        self.guests: Guests | None = None

    # ---- persistence ---------------------------------------------------------------------
    def load(self) -> None:
        """Reads apps, tasks and deployments back after a restart, and re-accounts the running
        tasks' resources with the allocator (agents are added by the master first)."""
        for app_id, raw in self.store.items("apps"):
            self.apps[app_id] = AppDefinition.model_validate(raw)
        for task_id, raw in self.store.items("tasks"):
            task = TaskRecord.model_validate(raw)
            if task.terminal:
                self.store.delete("tasks", task_id)
                continue
            self._add_task(task)
        self.deployments.load()
        self.queue.load()
        for task in self.tasks.values():
            self._ensure_framework(task.role)
            # A launch never acknowledged is sent again under its id (agents start an id once).
            task.launch_next_at = 0.0
            if task.terminal or task.released:
                continue
            try:
                self.allocator.restore(task.framework_id, task.agent_id, task.resources)
            except (KeyError, ValueError) as exc:
                log.warning("task %s: cannot re-account its resources on %s: %s", task.task_id, task.agent_id, exc)

    def _save_task(self, task: TaskRecord) -> None:
        self.store.put("tasks", task.task_id, task.model_dump())

    def _save_app(self, app: AppDefinition) -> None:
        self.store.put("apps", app.id, app_record(app))

    # ---- app operations (the Marathon API calls these) -----------------------------------
    def put_app(self, app: AppDefinition, action: Action) -> Deployment:
        """Starts a one-step deployment that stores the app (new or changed), superseding the app's
        running ones (``deployment_failed``). The app must be validated; never raises for a valid app."""
        previous = self.apps.get(app.id)
        self.deployments.supersede(app.id)
        return self.deployments.start([[PlanAction(action=action, app_id=app.id, app=app_record(app))]],
                                      {app.id: app_record(previous) if previous else None},
                                      app.version or iso_now())

    def remove_app(self, app_id: str) -> Deployment:
        """Forgets the app at once; its tasks are killed by the next cycles (``StopApplication``
        completes when none is left). Removing an unknown id only starts an empty deployment."""
        previous = self.apps.get(app_id)
        self.deployments.supersede(app_id)
        return self.deployments.start([[PlanAction(action="StopApplication", app_id=app_id)]],
                                      {app_id: app_record(previous) if previous else None}, iso_now())

    def apply_action(self, action: PlanAction) -> None:
        """A deployment step's action: its app stored (tasks follow in the cycles), or dropped."""
        if action.app is None:
            self._drop_app(action.app_id)
        else:
            self._store_app(AppDefinition.model_validate(action.app))

    def _store_app(self, app: AppDefinition) -> None:
        previous = self.apps.get(app.id)
        self.apps[app.id] = app
        self._save_app(app)
        if previous is None or previous.config_without_scaling() != app.config_without_scaling():
            self.queue.reset_backoff(app.id)
        self.poke()

    def _drop_app(self, app_id: str) -> None:
        self.apps.pop(app_id, None)
        self.store.delete("apps", app_id)
        self.queue.forget(app_id)
        self.events.publish("app_terminated_event", appId=app_id)
        self.poke()

    def kill_task(self, task_id: str, scale: bool) -> TaskRecord | None:
        """Kills one task (``DELETE /v2/apps/{id}/tasks/{task}``); with ``scale`` the app shrinks.
        Idempotent; returns None for an unknown task."""
        task = self.tasks.get(task_id)
        if task is None:
            return None
        app = self.apps.get(task.app_id)
        if scale and app is not None and app.instances > 0:
            app.instances -= 1
            self._save_app(app)
        self._request_kill(task)
        self.poke()
        return task

    def poke(self) -> None:
        """Runs the next cycle now rather than at the next tick. Idempotent."""
        self.wake.set()

    def observe_cycles(self, observer: Callable[[float], None]) -> None:
        """Calls ``observer(seconds)`` after every cycle (metrics)."""
        self._cycle_observers.append(observer)

    def reconcile_soon(self, agent_id: str) -> None:
        """Starts ``reconcile(agent_id)`` in the background (``settle()`` waits for it)."""
        self._spawn(self.reconcile(agent_id))

    # ---- queries -------------------------------------------------------------------------
    def _add_task(self, task: TaskRecord) -> None:
        self.tasks[task.task_id] = task
        self._by_app.setdefault(task.app_id, {})[task.task_id] = task

    def app_tasks(self, app_id: str) -> list[TaskRecord]:
        return sorted(self._by_app.get(app_id, {}).values(), key=lambda t: t.staged_at)

    def active(self, app_id: str) -> list[TaskRecord]:
        """Tasks that count as instances: not terminal, not being killed, not written off."""
        return [t for t in self.app_tasks(app_id) if not t.terminal and not t.kill_requested
                and not self._written_off(t)]

    def _written_off(self, task: TaskRecord) -> bool:
        if task.state != "TASK_UNREACHABLE" or task.unreachable_since is None:
            return False
        app = self.apps.get(task.app_id)
        after = app.unreachable_waits[0] if app else 0
        return self.clock() - task.unreachable_since >= after

    # ---- the cycle -----------------------------------------------------------------------
    async def run(self, interval: float = 1.0) -> None:
        """Cycles every ``interval`` and whenever poked; never dies on a bad cycle."""
        while True:
            try:
                await asyncio.wait_for(self.wake.wait(), interval)
            except TimeoutError:
                pass
            self.wake.clear()
            # A store that refuses writes: no decisions it could not keep (launches, kills, steps).
            refusal = write_refusal(self.store)
            if refusal != self.paused_by:
                if refusal is not None:
                    log.error("scheduler paused: %s", refusal)
                else:
                    log.info("scheduler resumed: the state store takes writes again")
                self.paused_by = refusal
            if refusal is not None:
                continue
            try:
                await self.cycle()
            except Exception:
                log.exception("scheduler cycle failed")

    async def cycle(self, now: float | None = None) -> None:
        started = time.perf_counter()
        now = self.clock() if now is None else now
        kills: list[TaskRecord] = []
        demand: dict[str, int] = {}
        self._expunge_unreachable(now)
        for task in list(self.tasks.values()):
            if task.terminal or task.kill_requested:
                continue
            if task.app_id not in self.apps:
                kills.append(task)      # the app is gone
            elif task.state in ("TASK_STAGING", "TASK_STARTING") and now - task.staged_at > LAUNCH_TIMEOUT_SECONDS:
                log.warning("task %s not running after %.0fs: replacing it", task.task_id, LAUNCH_TIMEOUT_SECONDS)
                task.message = "launch timed out"
                kills.append(task)
        for app in list(self.apps.values()):
            app_kills, launches = self._plan(app)
            kills += app_kills
            if launches > 0:
                demand[app.id] = launches
        for task in kills:
            self._request_kill(task)
        await self._resend_stuck_kills(now)
        self._match_offers(demand, now)
        self._dispatch(now)
        self.deployments.advance(self.action_done)
        self.last_cycle_seconds = time.perf_counter() - started
        for observe in self._cycle_observers:
            observe(self.last_cycle_seconds)

    def _plan(self, app: AppDefinition) -> tuple[list[TaskRecord], int]:
        """What to kill and how many to launch for one app (scale, rolling upgrade)."""
        config = app.version_info.last_config_change_at if app.version_info else ""
        active = self.active(app.id)
        killing = [t for t in self.app_tasks(app.id) if t.kill_requested and not t.terminal]
        new = [t for t in active if t.config_version == config]
        old = [t for t in active if t.config_version != config]
        target = app.instances
        kills: list[TaskRecord] = []
        if len(new) > target:
            kills += self._kill_order(app, new)[: len(new) - target]
            new = [t for t in new if t not in kills]
        if old:
            strategy = app.upgrade_strategy
            max_total = target + math.floor(target * strategy.maximum_over_capacity + 1e-9)
            min_healthy = math.ceil(target * strategy.minimum_health_capacity - 1e-9)
            ready_new = sum(1 for t in new if t.ready)
            old_unready = [t for t in old if not t.ready]
            old_ready = [t for t in old if t.ready]
            kills += old_unready    # they add no capacity
            killable = max(0, len(old_ready) + ready_new - min_healthy)
            if len(new) >= target and ready_new >= target:
                killable = len(old_ready)
            chosen = self._kill_order(app, old_ready)[:killable]
            kills += chosen
            remaining_old = len(old_ready) - len(chosen)
            room = max_total - (len(new) + remaining_old + len(killing))
            launch = max(0, min(target - len(new), room))
            # Stuck only once every new task is ready: new ones still starting will free room.
            stuck = (launch == 0 or app.id in self.unplaceable) and all(t.ready for t in new)
            if stuck and not chosen and remaining_old and len(new) < target and not killing:
                # No room (minimumHealthCapacity 1 with maximumOverCapacity 0), or the new tasks
                # fit nowhere while old ones hold their places (e.g. hostname:UNIQUE on as many
                # agents as instances): replace one old task at a time instead of hanging.
                log.info("app %s: upgrade blocked, replacing one old task to make room", app.id)
                kills += self._kill_order(app, old_ready)[:1]
            return kills, launch
        return kills, max(0, target - len(new))

    @staticmethod
    def _kill_order(app: AppDefinition, tasks: list[TaskRecord]) -> list[TaskRecord]:
        # Not-yet-running tasks go first; then Marathon's killSelection.
        youngest = app.kill_selection == "YOUNGEST_FIRST"
        return sorted(tasks, key=lambda t: (t.state == "TASK_RUNNING", -t.staged_at if youngest else t.staged_at))

    def _expunge_unreachable(self, now: float) -> None:
        for task in list(self.tasks.values()):
            if task.state != "TASK_UNREACHABLE" or task.unreachable_since is None:
                continue
            app = self.apps.get(task.app_id)
            inactive, expunge = app.unreachable_waits if app else (0, 0)
            if now - task.unreachable_since >= max(expunge, inactive):
                self._set_state(task, "TASK_LOST", "agent unreachable; task expunged", now)
                self._terminated(task, now)

    # ---- kills ---------------------------------------------------------------------------
    def _request_kill(self, task: TaskRecord) -> None:
        if task.terminal or task.kill_requested:
            return
        task.kill_requested = True
        if task.state == "TASK_UNREACHABLE":
            self._set_state(task, "TASK_KILLED", "killed while its agent was unreachable", self.clock())
            self._terminated(task, self.clock())
            return
        self._set_state(task, "TASK_KILLING", "kill requested", self.clock())
        self._spawn(self._send_kill(task))

    async def _send_kill(self, task: TaskRecord) -> None:
        record = self.registry.get(task.agent_id)
        task.kill_sent_at = self.clock()
        if record is None:
            self._killed_without_agent(task, "agent unknown")
            return
        app = self.apps.get(task.app_id)
        grace = app.task_kill_grace_period_seconds if app and app.task_kill_grace_period_seconds is not None else 3.0
        try:
            known = await self.agents.kill(_address(record), task.task_id, grace)
        except AgentUnavailable as exc:
            log.warning("kill of %s: %s (retrying)", task.task_id, exc)
            return
        if not known and not task.terminal:
            self._killed_without_agent(task, "the agent does not know the task")

    def _killed_without_agent(self, task: TaskRecord, why: str) -> None:
        if task.terminal:
            return
        self._set_state(task, "TASK_KILLED", why, self.clock())
        self._terminated(task, self.clock())

    async def _resend_stuck_kills(self, now: float) -> None:
        for task in list(self.tasks.values()):
            if task.kill_requested and not task.terminal and task.kill_sent_at is not None:
                if now - task.kill_sent_at > KILL_RETRY_SECONDS + 3.0:
                    self._spawn(self._send_kill(task))

    # ---- offers --------------------------------------------------------------------------
    def _ensure_framework(self, role: str) -> str:
        framework_id = framework_for(role)
        if framework_id not in self.frameworks:
            self.allocator.add_framework(framework_id, role)
            self.frameworks.add(framework_id)
        return framework_id

    def _match_offers(self, demand: dict[str, int], now: float) -> list[TaskRecord]:
        """Offers → new TASK_STAGING tasks (sent by ``_dispatch``). Every agent with free
        resources has an offer each cycle; the least loaded come first (ties shuffled, as Mesos
        shuffles agents), and placements go round the offers in slices, so a burst spreads over
        every agent instead of filling the first."""
        ready = self.queue.ready(demand)
        roles = {self.apps[a].effective_role for a in ready}
        for role in roles | {t.role for t in self.tasks.values()}:
            self._ensure_framework(role)
        for framework_id in self.frameworks:
            if any(framework_for(r) == framework_id for r in roles):
                self.allocator.revive(framework_id)
            else:
                self.allocator.suppress(framework_id)
        self.queue.refresh(demand, ready)
        guests = self.guests
        if not ready and not (guests is not None and guests.wants_offers()):
            return []
        offers = self.allocator.allocate(now)
        if guests is not None:
            offers = guests.take_offers(offers, now)     # the other frameworks' offers go to them
        live = list(self.tasks.values()) + (list(guests.framework_tasks()) if guests is not None else [])
        slots = agent_slots(self.registry.all(), live)
        placed_on: dict[str, list[AgentSlot]] = {
            app_id: [slots[t.agent_id] for t in self.active(app_id) if t.agent_id in slots] for app_id in ready}
        launches: list[TaskRecord] = []
        rejects: dict[str, dict[str, int]] = {app_id: {} for app_id in ready}
        load: dict[str, int] = {}
        for task in self.tasks.values():
            load[task.agent_id] = load.get(task.agent_id, 0) + 1
        self.rng.shuffle(offers)
        offers.sort(key=lambda offer: load.get(offer.agent_id, 0))
        wanted = sum(ready.values())
        per_round = max(1, math.ceil(wanted / max(1, len(offers) * SPREAD_ROUNDS)))
        used: dict[str, dict[str, float]] = {offer.offer_id: {} for offer in offers}
        remaining = {offer.offer_id: dict(offer.resources) for offer in offers}
        open_offers = list(offers)
        while open_offers and any(n > 0 for n in ready.values()):
            for offer in list(open_offers):
                took, placements = fill_offer(offer, ready, self.apps, slots, placed_on, rejects, self.rng,
                                              remaining=remaining[offer.offer_id], limit=per_round)
                for name, value in took.items():
                    used[offer.offer_id][name] = used[offer.offer_id].get(name, 0.0) + value
                launches += [self._new_task(placement, now) for placement in placements]
                if len(placements) < per_round:
                    open_offers.remove(offer)       # full, or nothing else fits on it
        for offer in offers:
            if used[offer.offer_id]:
                self.allocator.accept(offer, used[offer.offer_id], now)
                self.offers_accepted += 1
            else:
                self.allocator.decline(offer, now)
                self.offers_declined += 1
        self.unplaceable = {app_id for app_id, left in ready.items() if left > 0}
        for app_id, reasons in rejects.items():
            if ready.get(app_id, 0) > 0 and app_id in self.queue.entries:
                self.queue.explain(app_id, reasons, explain(self.apps[app_id], slots, placed_on.get(app_id, []),
                                                            self._free_of))
        return launches

    def _free_of(self, agent_id: str) -> dict[str, float]:
        try:
            return self.allocator.free(agent_id)
        except KeyError:
            return {}

    def _new_task(self, placement: Placement, now: float) -> TaskRecord:
        app, slot, host_ports, framework_id = placement.app, placement.slot, placement.host_ports, \
            placement.framework_id
        record = self.registry.get(slot.agent_id)
        assert record is not None
        ports: list[TaskPort] = []
        service_ports: list[int] = []
        if app.uses_port_mappings:
            for mapping, host_port in zip(app.port_mappings, host_ports, strict=True):
                ports.append(TaskPort(host_port=host_port, container_port=mapping.container_port or None,
                                      protocol=task_protocol(mapping.protocol), name=mapping.name,
                                      labels=mapping.labels))
                service_ports.append(mapping.service_port)
        else:
            for definition, host_port in zip(app.port_definitions or [], host_ports, strict=True):
                ports.append(TaskPort(host_port=host_port, protocol=task_protocol(definition.protocol),
                                      name=definition.name, labels=definition.labels))
                service_ports.append(definition.port)
        task = TaskRecord(
            task_id=f"{marathon_task_prefix(app.id)}.{uuid.uuid4()}",
            app_id=app.id,
            config_version=app.version_info.last_config_change_at if app.version_info else "",
            version=app.version or "",
            agent_id=slot.agent_id, agent_ip=record.registration.ip, hostname=slot.hostname,
            framework_id=framework_id, role=app.effective_role,
            has_health_checks=bool(app.health_checks), staged_at=now,
            resources=task_resources(app), network=app.network_mode, ports=ports,
            service_ports=service_ports, labels=dict(app.labels))
        self._add_task(task)
        self._set_state(task, "TASK_STAGING", "launching", now)
        return task

    # ---- launching -----------------------------------------------------------------------
    def _dispatch(self, now: float) -> None:
        """Sends every launch that is due, one request per agent (at most one in flight per
        agent): new tasks, launches whose answer was lost (same task id), and ones an agent was
        too busy to take. Never waits for the agents."""
        due: dict[str, list[TaskRecord]] = {}
        for task in self.tasks.values():
            if task.state != "TASK_STAGING" or task.launched_at is not None or task.kill_requested \
                    or task.launch_next_at > now or task.agent_id in self._launching:
                continue
            batch = due.setdefault(task.agent_id, [])
            if len(batch) < LAUNCH_BATCH:
                batch.append(task)
        for agent_id, tasks in due.items():
            record = self.registry.get(agent_id)
            if record is None or not record.reachable:
                continue    # agent_unreachable / agent_removed decide about these tasks
            self._launching.add(agent_id)
            self._spawn(self._launch_batch(record, tasks))

    async def _launch_batch(self, record: AgentRecord, tasks: list[TaskRecord]) -> None:
        agent_id = record.registration.agent_id
        tasks = [task for task in tasks if task.app_id in self.apps]
        now = self.clock()
        for task in tasks:
            task.launch_sent_at = now
            task.launch_attempts += 1
            # Sent again under the same id if no answer comes (the agent may have it anyway).
            task.launch_next_at = now + min(LAUNCH_RESEND_SECONDS * 2 ** (task.launch_attempts - 1),
                                            LAUNCH_RESEND_MAX_SECONDS)
        try:
            answer = await self.agents.launch_batch(_address(record), [self.launch_message(t) for t in tasks]) \
                if tasks else LaunchAnswer()
        except AgentUnavailable as exc:
            log.warning("agent %s did not acknowledge %d launches (%s): they stay staging and are sent again "
                        "under the same ids", agent_id, len(tasks), exc)
            return
        finally:
            self._launching.discard(agent_id)
        now = self.clock()
        busy = 0
        for task in tasks:
            if task.terminal:
                continue    # it already ended (a fast exit reported before the agent's answer)
            if task.task_id in answer.rejected:
                # The agent refusing the launch is the app's error: it will not run.
                reason = answer.rejected[task.task_id] or "refused by the agent"
                log.warning("launch of %s rejected by %s: %s", task.task_id, agent_id, reason)
                self._set_state(task, "TASK_ERROR", reason, now)
                self._terminated(task, now)
            elif task.task_id in answer.busy:
                busy += 1
                task.launch_next_at = now + BUSY_RETRY_SECONDS
            elif task.launched_at is None:
                task.launched_at = now
                self._save_task(task)
        if busy:
            log.info("agent %s is busy: %d launches wait", agent_id, busy)

    def launch_message(self, task: TaskRecord) -> TaskLaunch:
        app = self.apps[task.app_id]
        checks = [HealthCheckSpec(
            protocol=c.protocol, path=c.path or "/", port_index=c.port_index, port=c.port,
            command=c.command.value if c.command else None, grace_period_seconds=c.grace_period_seconds,
            interval_seconds=c.interval_seconds, timeout_seconds=c.timeout_seconds,
            max_consecutive_failures=c.max_consecutive_failures, delay_seconds=c.delay_seconds)
            for c in app.health_checks]
        env = {k: v for k, v in app.env.items() if isinstance(v, str)}
        for name, ref in app.env.items():
            source = (app.secrets.get(ref.get("secret", "")) or {}).get("source") if isinstance(ref, dict) else None
            value = self.secret_source(str(source)) if source else None
            if value is not None:
                env[name] = value
        env.setdefault("MARATHON_APP_VERSION", app.version or "")
        container_type = app.container.type if app.container else "NONE"
        return TaskLaunch(
            task_id=task.task_id, app_id=app.id, name=marathon_task_name(app.id), cmd=app.cmd, args=app.args,
            env=env, cpus=app.cpus, mem=app.mem, disk=app.disk, network=app.network_mode,
            network_name=app.network_name, container_type=container_type, image=app.image,
            ports=task.ports, health_checks=checks, labels=dict(app.labels),
            kill_grace_seconds=app.task_kill_grace_period_seconds or 3.0, user=app.user)

    # ---- statuses from agents ------------------------------------------------------------
    async def on_status(self, agent_id: str, status: TaskStatus) -> str:
        """Applies one status from an agent. Returns what happened (for the agent's answer)."""
        if self.guests is not None and self.guests.owns(status.task_id):
            return await self.guests.on_status(agent_id, status)
        task = self.tasks.get(status.task_id)
        if task is None or task.agent_id != agent_id or (task.terminal and status.state not in TERMINAL):
            if status.state in TERMINAL:
                self._suspects.pop((agent_id, status.task_id), None)
                return "unknown task"
            # Never killed on a report alone: a reconciliation round must confirm it is nobody's.
            self._suspect(agent_id, status.task_id)
            return "unknown task: reconciling"
        now = self.clock()
        if status.ip_addresses:
            task.ip_addresses = list(status.ip_addresses)
        if status.ports:
            task.ports = _merge_ports(task.ports, status.ports)
        if status.healthy is not None and status.healthy == task.healthy:
            task.observe_health(status.healthy, now)
        elif status.healthy is not None:
            task.observe_health(status.healthy, now)
            self.events.publish("health_status_changed_event", appId=task.app_id, taskId=task.task_id,
                                instanceId=task.task_id, version=task.version, alive=status.healthy)
            self.on_change()
        if task.state == "TASK_UNREACHABLE" and status.state not in TERMINAL:
            task.unreachable_since = None
            try:
                self.allocator.restore(task.framework_id, task.agent_id, task.resources)
                task.released = False
            except (KeyError, ValueError) as exc:
                log.warning("task %s back from unreachable, resources not re-accounted: %s", task.task_id, exc)
        state = status.state
        if task.kill_requested and state in ("TASK_RUNNING", "TASK_STAGING", "TASK_STARTING"):
            state = "TASK_KILLING"  # the agent has not seen our kill yet; keep what we asked for
        if state != task.state or status.message:
            self._set_state(task, state, status.message, status.timestamp or now, status)
        else:
            self._save_task(task)
        if state == "TASK_RUNNING" and task.started_at is None:
            task.started_at = now
            self._save_task(task)
        if task.terminal:
            self._terminated(task, now)
        self.poke()
        return "ok"

    def _suspect(self, agent_id: str, task_id: str) -> None:
        if (agent_id, task_id) not in self._suspects:
            log.info("agent %s reports task %s, which the master does not know: reconciling", agent_id, task_id)
            self._suspects[(agent_id, task_id)] = self._rounds.get(agent_id, 0)
        if agent_id not in self._reconciling:
            self._reconciling.add(agent_id)
            self._spawn(self._reconcile_later(agent_id))

    async def _reconcile_later(self, agent_id: str) -> None:
        await asyncio.sleep(self.orphan_confirm_seconds)
        self._reconciling.discard(agent_id)
        await self.reconcile(agent_id)

    async def _reconcile_again(self, agent_id: str) -> None:
        await asyncio.sleep(self.reconcile_retry_seconds)
        self._reconcile_retry.discard(agent_id)
        record = self.registry.get(agent_id)
        if record is not None and record.reachable:
            await self.reconcile(agent_id)

    async def _kill_unknown(self, record: AgentRecord, task_id: str) -> None:
        try:
            await self.agents.kill(_address(record), task_id, 0.0)
        except AgentUnavailable as exc:
            log.warning("could not kill orphaned task %s: %s", task_id, exc)

    def _set_state(self, task: TaskRecord, state: str, message: str, timestamp: float,
                   status: TaskStatus | None = None) -> None:
        changed = state != task.state or not task.statuses
        task.state = state
        task.message = message
        entry: dict[str, Any] = {"state": state, "timestamp": timestamp}
        if status is not None:
            if status.healthy is not None:
                entry["healthy"] = status.healthy
            if status.ip_addresses:
                entry["ip_addresses"] = list(status.ip_addresses)
        task.statuses = (task.statuses + [entry])[-10:]
        self._save_task(task)
        if changed:
            self.events.publish(
                "status_update_event", slaveId=task.agent_id, taskId=task.task_id, taskStatus=state,
                message=message, appId=task.app_id, host=task.hostname, instanceId=task.task_id,
                ipAddresses=[{"ipAddress": ip, "protocol": "IPv4"} for ip in task.ip_addresses or [task.agent_ip]],
                ports=task.host_ports, version=task.version)
            self.on_change()

    def _terminated(self, task: TaskRecord, now: float) -> None:
        """A task ended: resources back, backoff for an unasked-for end, out of the live set."""
        if not task.released:
            task.released = True
            try:
                self.allocator.release(task.framework_id, task.agent_id, task.resources)
            except (KeyError, ValueError) as exc:
                log.warning("release of %s on %s: %s", task.task_id, task.agent_id, exc)
        # A task lost (with its agent, or by the agent) is replaced at once: the app did nothing wrong.
        if not task.kill_requested and task.app_id in self.apps and task.unreachable_since is None \
                and task.state != "TASK_LOST":
            self.queue.failed(self.apps[task.app_id], task, now)
        self.tasks.pop(task.task_id, None)
        siblings = self._by_app.get(task.app_id, {})
        siblings.pop(task.task_id, None)
        if not siblings:
            self._by_app.pop(task.app_id, None)
        self.store.delete("tasks", task.task_id)
        self.completed = (self.completed + [task])[-COMPLETED_KEEP:]
        self.on_change()
        self.poke()

    # ---- agents coming and going ---------------------------------------------------------
    def agent_unreachable(self, agent_id: str) -> None:
        """The agent went quiet: its tasks become TASK_UNREACHABLE (replaced once the app's
        ``inactiveAfterSeconds`` passes). Idempotent."""
        now = self.clock()
        for task in list(self.tasks.values()):
            if task.agent_id != agent_id or task.terminal:
                continue
            if task.kill_requested:
                self._killed_without_agent(task, "agent unreachable while killing")
                continue
            task.unreachable_since = now
            task.released = True        # remove_agent below returns them
            self._set_state(task, "TASK_UNREACHABLE", f"agent {agent_id} is unreachable", now)
        self.poke()

    def agent_removed(self, agent_id: str) -> None:
        """The agent is gone for good: its tasks are TASK_LOST now and replaced. Idempotent."""
        now = self.clock()
        for task in list(self.tasks.values()):
            if task.agent_id == agent_id and not task.terminal:
                task.released = True
                self._set_state(task, "TASK_LOST", f"agent {agent_id} was removed", now)
                self._terminated(task, now)
        self.poke()

    async def reconcile(self, agent_id: str) -> None:
        """Asks the agent what it runs (queued launches included). A task the master launched
        and the agent acknowledged before we asked, but does not list, is lost (and replaced);
        one never acknowledged is sent again under its id. A task the agent lists that the master
        does not know is killed when it was already unknown before we asked (a second look),
        otherwise it is looked at again shortly."""
        record = self.registry.get(agent_id)
        if record is None:
            return
        asked_at = self.clock()
        this_round = self._rounds[agent_id] = self._rounds.get(agent_id, 0) + 1
        try:
            statuses = await self.agents.tasks(_address(record))
        except AgentUnavailable as exc:
            # E.g. an agent that registers before its API serves: ask again while it is reachable,
            # since staging tasks wait for this answer.
            tries = self._reconcile_tries[agent_id] = self._reconcile_tries.get(agent_id, 0) + 1
            if tries > RECONCILE_RETRIES:
                log.warning("reconciliation with %s failed: %s", agent_id, exc)
                self._reconcile_tries.pop(agent_id, None)
                return
            log.warning("reconciliation with %s failed (%s): asking again in %.0fs", agent_id, exc,
                        self.reconcile_retry_seconds)
            if agent_id not in self._reconcile_retry:
                self._reconcile_retry.add(agent_id)
                self._spawn(self._reconcile_again(agent_id))
            return
        self._reconcile_tries.pop(agent_id, None)
        reported = {s.task_id for s in statuses}
        for status in statuses:
            if self.guests is not None and self.guests.owns(status.task_id):
                await self.guests.on_status(agent_id, status)
                continue
            task = self.tasks.get(status.task_id)
            known = task is not None and task.agent_id == agent_id and not task.terminal
            seen = self._suspects.get((agent_id, status.task_id))
            if known or status.state in TERMINAL or seen is None or seen >= this_round:
                await self.on_status(agent_id, status)
                continue
            del self._suspects[(agent_id, status.task_id)]
            log.warning("agent %s runs task %s, which belongs to no app or task the master knows (confirmed by "
                        "reconciliation): killing it", agent_id, status.task_id)
            self.unknown_killed += 1
            self._spawn(self._kill_unknown(record, status.task_id))
        if self.guests is not None:
            self.guests.reconciled(agent_id, reported, asked_at)
        for key in [key for key in self._suspects if key[0] == agent_id and key[1] not in reported]:
            del self._suspects[key]     # gone meanwhile
        for task in list(self.tasks.values()):
            if task.agent_id != agent_id or task.task_id in reported or task.terminal:
                continue
            if task.launched_at is not None and task.launched_at <= asked_at:
                log.warning("task %s lost: agent %s acknowledged its launch but does not list it (reconciliation)",
                            task.task_id, agent_id)
                self._set_state(task, "TASK_LOST", f"agent {agent_id} does not run it anymore", self.clock())
                self._terminated(task, self.clock())
            elif task.launched_at is None and task.state == "TASK_STAGING":
                task.launch_next_at = 0.0      # not there (yet): send it again, same id
        log.info("reconciled %d tasks with %s", len(statuses), agent_id)

    # ---- deployments ---------------------------------------------------------------------
    def action_done(self, action: PlanAction) -> bool:
        """Stop: the app gone and no task left. Otherwise: exactly ``instances`` tasks, all on the
        app's config and ready."""
        app = self.apps.get(action.app_id)
        remaining = [t for t in self.app_tasks(action.app_id) if not t.terminal]
        if action.action == "StopApplication":
            return app is None and not remaining
        if app is None:
            return False
        config = app.version_info.last_config_change_at if app.version_info else ""
        active = self.active(app.id)
        return (len(active) == app.instances and len(remaining) == len(active)
                and all(t.config_version == config and t.ready for t in active))

    # ---- helpers -------------------------------------------------------------------------
    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._pending_io.add(task)
        task.add_done_callback(self._pending_io.discard)

    async def settle(self) -> None:
        """Waits for in-flight kills and reconciliations (tests)."""
        while self._pending_io:
            await asyncio.gather(*list(self._pending_io), return_exceptions=True)


def app_record(app: AppDefinition) -> dict[str, Any]:
    """The app as the store (kind ``apps``) and deployment plans keep it."""
    return app.model_dump(by_alias=True, exclude_none=True)


def _merge_ports(ours: list[TaskPort], reported: list[TaskPort]) -> list[TaskPort]:
    """The agent's bound ports, keeping the app's names and labels (VIP_0…) where it omits them."""
    merged = []
    for index, port in enumerate(reported):
        mine = ours[index] if index < len(ours) else None
        if mine is not None:
            port = port.model_copy(update={"labels": port.labels or mine.labels, "name": port.name or mine.name})
        merged.append(port)
    return merged


def _address(record: AgentRecord) -> AgentAddress:
    reg = record.registration
    return AgentAddress(reg.agent_id, reg.ip, reg.port)
