"""Frameworks of the Mesos v1 scheduler API: subscriptions, offers, launches, status updates.

Marathon is built into the master (``scheduler.py``); every other framework subscribes over HTTP
(``control/http/scheduler_api.py``) and lives here, next to it under the same DRF allocator:

```
SUBSCRIBE ─► Framework (id, role, failover_timeout) ─► Allocator.add_framework(role)
Scheduler.cycle ─► Allocator.allocate ─► take_offers: this module's offers (+ the agent's free
        ports) ─► OFFERS on the framework's stream; Marathon keeps the rest
ACCEPT(LAUNCH TaskInfo) ─► checks (offer outstanding, resources within it) ─► TASK_STAGING ─►
        AgentClient.launch_batch (same launch protocol as Marathon: resent under the same id)
        bad offer ─► TASK_DROPPED/TASK_LOST, bad task ─► TASK_ERROR (no uuid: nothing to acknowledge)
agent statuses ─► Scheduler.on_status ─► on_status ─► UPDATE with a uuid, resent until ACKNOWLEDGE
DECLINE/REVIVE/SUPPRESS/KILL/RECONCILE/TEARDOWN ─► allocator / agents / the stream
tick (every 0.5 s): a stream stalled for MISSED_HEARTBEATS heartbeats is dropped; a framework
        away longer than its failover_timeout is removed (tasks killed, resources back)
```

Frameworks and their live tasks are written to the state store (kinds ``frameworks``,
``framework_tasks``); a restarted master reloads them as disconnected (a fresh failover window)
and re-accounts their tasks with the allocator, so a framework that re-subscribes with its id
finds them. Errors are answers, never exceptions thrown at the agents: ``CallRefused`` carries
the HTTP status and Mesos' sentence for the face.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from cluster.view import FrameworkInfo, TaskInfo, TaskPort
from control.agent_client import AgentAddress, AgentClient, AgentUnavailable, LaunchAnswer
from control.drf import Allocator, Offer
from control.mesos_v1 import (
    Call,
    CallInvalid,
    FrameworkSpec,
    TaskSpec,
    framework_spec,
    new_status_uuid,
    ranges_of,
    resources_json,
    status_json,
    task_spec,
    value_of,
)
from control.protocol import TaskLaunch, TaskStatus
from control.registry import AgentRegistry
from control.state import StateStore
from control.task_record import TaskRecord

log = logging.getLogger("navstar.frameworks")

HEARTBEAT_SECONDS = 15.0          # Mesos' default heartbeat_interval_seconds
MISSED_HEARTBEATS = 3             # a stream that delivered nothing for this many heartbeats is dropped
UPDATE_RETRY_SECONDS = 5.0        # an unacknowledged update is sent again, doubling up to the maximum
UPDATE_RETRY_MAX_SECONDS = 60.0
LAUNCH_RESEND_SECONDS = 2.0
COMPLETED_KEEP = 200
KILL_GRACE_SECONDS = 3.0


class CallRefused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class FrameworkTask(TaskRecord):
    """A framework's task: a ``TaskRecord`` with its Mesos name and the launch to resend."""

    name: str
    launch: dict[str, Any]
    last_reason: str | None = None


@dataclass
class Subscription:
    """One SUBSCRIBE's event stream. The face drains ``queue`` and calls ``delivered`` after each
    record it handed to the connection; ``None`` in the queue ends the stream."""

    stream_id: str
    queue: asyncio.Queue[dict[str, Any] | None]
    delivered_at: float
    closed: bool = False

    def delivered(self, now: float) -> None:
        self.delivered_at = now

    def close(self, error: str | None = None) -> None:
        if self.closed:
            return
        self.closed = True
        if error:
            self.queue.put_nowait({"type": "ERROR", "error": {"message": error}})
        self.queue.put_nowait(None)


@dataclass
class PendingUpdate:
    status: dict[str, Any]
    next_at: float
    attempts: int = 1


@dataclass
class Framework:
    framework_id: str
    spec: FrameworkSpec
    registered_at: float
    ip: str
    subscription: Subscription | None = None
    disconnected_at: float | None = None
    suppressed: bool = False
    offers: dict[str, tuple[Offer, list[tuple[int, int]]]] = field(default_factory=dict)
    pending: dict[str, PendingUpdate] = field(default_factory=dict)
    tasks: dict[str, FrameworkTask] = field(default_factory=dict)

    @property
    def connected(self) -> bool:
        return self.subscription is not None and not self.subscription.closed

    @property
    def partition_aware(self) -> bool:
        return "PARTITION_AWARE" in self.spec.capabilities

    def as_json(self) -> dict[str, Any]:
        """The framework as Mesos' ``/master/state`` and ``/master/frameworks`` list it."""
        used: dict[str, float] = {}
        for task in self.tasks.values():
            for name, value in task.resources.items():
                used[name] = round(used.get(name, 0.0) + value, 3)
        offered: dict[str, float] = {}
        for offer, _ports in self.offers.values():
            for name, value in offer.resources.items():
                offered[name] = round(offered.get(name, 0.0) + value, 3)
        return {
            "id": self.framework_id, "name": self.spec.name, "pid": f"scheduler-{self.framework_id}@{self.ip}:0",
            "hostname": self.spec.hostname or self.ip, "webui_url": self.spec.webui_url, "user": self.spec.user,
            "role": self.spec.role, "roles": [self.spec.role], "principal": self.spec.principal,
            "active": self.connected and not self.suppressed, "connected": self.connected,
            "recovered": False, "checkpoint": self.spec.checkpoint, "failover_timeout": self.spec.failover_timeout,
            "capabilities": [{"type": c} for c in self.spec.capabilities],
            "registered_time": self.registered_at,
            "unregistered_time": self.disconnected_at or 0, "resources": used, "used_resources": used,
            "offered_resources": offered, "offers": [], "executors": [],
        }


class Frameworks:
    def __init__(self, registry: AgentRegistry, allocator: Allocator, agents: AgentClient, store: StateStore,
                 master_id: str, clock: Callable[[], float] = time.time,
                 on_change: Callable[[], None] = lambda: None, poke: Callable[[], None] = lambda: None,
                 heartbeat_seconds: float = HEARTBEAT_SECONDS, marathon_tasks: Callable[[], Iterable[TaskRecord]]
                 = lambda: ()) -> None:
        self.registry = registry
        self.allocator = allocator
        self.agents = agents
        self.store = store
        self.master_id = master_id
        self.clock = clock
        self.on_change = on_change          # the cluster view's version bump
        self.poke = poke                    # runs the next allocation cycle now
        self.heartbeat_seconds = heartbeat_seconds
        self.marathon_tasks = marathon_tasks
        self.frameworks: dict[str, Framework] = {}
        self.completed_frameworks: list[dict[str, Any]] = []
        self.completed_tasks: list[FrameworkTask] = []
        self._task_owner: dict[str, str] = {}      # task id → framework id
        # Frameworks removed while some of their tasks are still being killed (their statuses end them).
        self._gone: dict[str, Framework] = {}
        self._weights: dict[str, float] = {}
        self._pending_io: set[asyncio.Task[None]] = set()
        self._launching: set[str] = set()
        self.calls_refused = 0

    # ---- persistence -----------------------------------------------------------------------
    def load(self) -> None:
        """Frameworks and their tasks after a master restart: disconnected, with a fresh failover
        window; their tasks' resources re-accounted (the agents must be known already)."""
        now = self.clock()
        for framework_id, raw in self.store.items("frameworks"):
            spec = FrameworkSpec(**raw["spec"])
            framework = Framework(framework_id, spec, raw["registered_at"], raw.get("ip", ""), disconnected_at=now)
            self._add(framework)
            self.allocator.suppress(framework_id)
        for task_id, raw in self.store.items("framework_tasks"):
            task = FrameworkTask.model_validate(raw)
            owner = self.frameworks.get(task.framework_id)
            if owner is None or task.terminal:
                self.store.delete("framework_tasks", task_id)
                continue
            owner.tasks[task_id] = task
            self._task_owner[task_id] = owner.framework_id
            task.launch_next_at = 0.0
            try:
                self.allocator.restore(task.framework_id, task.agent_id, task.resources)
            except (KeyError, ValueError) as exc:
                log.warning("task %s: cannot re-account its resources on %s: %s", task_id, task.agent_id, exc)
        for role, weight in (self.store.get("meta", "role_weights") or {}).items():
            self.set_weight(role, float(weight))

    def _save(self, framework: Framework) -> None:
        self.store.put("frameworks", framework.framework_id, {
            "spec": framework.spec.__dict__, "registered_at": framework.registered_at, "ip": framework.ip})

    def _save_task(self, task: FrameworkTask) -> None:
        self.store.put("framework_tasks", task.task_id, task.model_dump())

    # ---- roles and weights -----------------------------------------------------------------
    def set_weight(self, role: str, weight: float) -> None:
        """The role's weight in DRF (Mesos ``/weights``). Raises ``ValueError`` for a bad one."""
        self.allocator.set_weight(role, weight)
        self._weights[role] = weight
        self.store.put("meta", "role_weights", self._weights)
        self.poke()

    def weights(self) -> dict[str, float]:
        return dict(self._weights)

    # ---- subscription ----------------------------------------------------------------------
    def subscribe(self, call: Call, ip: str, principal: str | None = None) -> tuple[Framework, Subscription]:
        """A SUBSCRIBE: a new framework, or a known one failing over to this stream (its previous
        stream ends with an ERROR). Raises ``CallInvalid``/``CallRefused``."""
        info = call.body["framework_info"]
        spec = framework_spec(info)
        if principal is not None:
            if spec.principal is not None and spec.principal != principal:
                raise CallRefused(400, f"Authenticated principal '{principal}' does not match principal "
                                       f"'{spec.principal}' set in `FrameworkInfo`")
            spec.principal = principal
        now = self.clock()
        framework_id = call.framework_id
        framework = self.frameworks.get(framework_id) if framework_id else None
        if framework is not None:
            if framework.spec.role != spec.role:
                raise CallRefused(400, f"Framework {framework_id} cannot change its role from "
                                       f"'{framework.spec.role}' to '{spec.role}' (multi-role updates are not supported)")
            if framework.subscription is not None:
                framework.subscription.close("Framework failed over")
            framework.spec = spec
            framework.ip = ip or framework.ip
            log.info("framework %s (%s) re-subscribed with %d tasks", framework_id, spec.name, len(framework.tasks))
        else:
            if framework_id is not None and any(f["id"] == framework_id for f in self.completed_frameworks):
                raise CallRefused(403, "Framework has been removed")
            if framework_id is None:
                framework_id = self._next_id()
            elif not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}", framework_id):
                raise CallInvalid(f"Framework id {framework_id!r} is invalid: letters, digits, '.', '_' and '-' only")
            framework = Framework(framework_id, spec, now, ip)
            try:
                self._add(framework)
            except ValueError as exc:       # the allocator's word on the role
                self.frameworks.pop(framework_id, None)
                raise CallInvalid(str(exc)) from None
            log.info("framework %s (%s) subscribed, role %s", framework_id, spec.name, spec.role)
        framework.disconnected_at = None
        self._save(framework)
        subscription = Subscription(str(uuid.uuid4()), asyncio.Queue(), now)
        framework.subscription = subscription
        self._send(framework, {"type": "SUBSCRIBED", "subscribed": {
            "framework_id": {"value": framework_id}, "heartbeat_interval_seconds": self.heartbeat_seconds,
            "master_info": {"id": self.master_id, "ip": 0, "port": 5050, "hostname": ""}}})
        if not framework.suppressed:
            self.allocator.revive(framework.framework_id)
        for pending in framework.pending.values():
            self._send(framework, {"type": "UPDATE", "update": {"status": pending.status}})
            pending.next_at = now + UPDATE_RETRY_SECONDS
        self.on_change()
        self.poke()
        return framework, subscription

    def _next_id(self) -> str:
        sequence = int(self.store.get("meta", "framework_seq", 0)) + 1
        self.store.put("meta", "framework_seq", sequence)
        return f"{self.master_id}-{sequence:04d}"

    def _add(self, framework: Framework) -> None:
        self.frameworks[framework.framework_id] = framework
        self.allocator.add_framework(framework.framework_id, framework.spec.role)

    def stream_ended(self, framework: Framework, subscription: Subscription) -> None:
        """The face lost the connection (client gone, or the stream stalled)."""
        if framework.subscription is subscription:
            self._disconnect(framework, "stream closed")

    def _disconnect(self, framework: Framework, why: str) -> None:
        subscription = framework.subscription
        framework.subscription = None
        if subscription is not None:
            subscription.close()
        framework.disconnected_at = self.clock()
        self._rescind_all(framework, refuse=0.0, notify=False)
        self.allocator.suppress(framework.framework_id)
        log.warning("framework %s (%s) disconnected (%s): its tasks are kept for %.0fs", framework.framework_id,
                    framework.spec.name, why, framework.spec.failover_timeout)
        self.on_change()

    def framework_for_call(self, call: Call, stream_id: str | None) -> Framework:
        """The framework a non-SUBSCRIBE call is for, checked as Mesos checks it."""
        framework = self.frameworks.get(call.framework_id or "")
        if framework is None:
            raise CallRefused(400, "Framework cannot be found")
        if not framework.connected:
            raise CallRefused(403, "Framework is not subscribed")
        if stream_id is None:
            raise CallRefused(400, "All non-subscribe calls should include the 'Mesos-Stream-Id' header")
        assert framework.subscription is not None
        if stream_id != framework.subscription.stream_id:
            raise CallRefused(400, f"The stream ID '{stream_id}' included in this request didn't match the stream "
                                   f"ID currently associated with framework ID {framework.framework_id}")
        return framework

    # ---- calls -----------------------------------------------------------------------------
    async def handle(self, framework: Framework, call: Call) -> None:
        """Runs one validated call for ``framework``. Raises ``CallInvalid``/``CallRefused``."""
        body = call.body
        if call.type == "TEARDOWN":
            self.remove(framework, "teardown")
        elif call.type == "ACCEPT":
            self.accept(framework, body)
        elif call.type == "DECLINE":
            self.decline(framework, [value_of(o, "decline.offer_ids") for o in body.get("offer_ids", [])],
                         _refuse(body))
        elif call.type == "REVIVE":
            framework.suppressed = False
            self.allocator.revive(framework.framework_id)
            self.on_change()
            self.poke()
        elif call.type == "SUPPRESS":
            framework.suppressed = True
            self.allocator.suppress(framework.framework_id)
            self._rescind_all(framework, refuse=0.0, notify=True)
            self.on_change()
        elif call.type == "KILL":
            self.kill(framework, value_of(body.get("task_id"), "kill.task_id"))
        elif call.type == "ACKNOWLEDGE":
            value_of(body.get("task_id"), "acknowledge.task_id")
            status_uuid = body.get("uuid")
            if not isinstance(status_uuid, str):
                raise CallInvalid("Expecting 'acknowledge.uuid' to be present")
            framework.pending.pop(status_uuid, None)
        elif call.type == "RECONCILE":
            self.reconcile(framework, body.get("tasks") or [])
        elif call.type in ("REQUEST", "MESSAGE", "SHUTDOWN"):
            pass        # accepted and ignored: navstar has no resource requests or custom executors
        else:
            raise CallRefused(501, f"{call.type} is not implemented")

    def accept(self, framework: Framework, body: dict[str, Any]) -> None:
        now = self.clock()
        refuse = _refuse(body)
        offer_ids = [value_of(o, "accept.offer_ids") for o in body.get("offer_ids", [])]
        launches: list[tuple[int, Any]] = []
        for operation in body.get("operations", []):
            if not isinstance(operation, dict):
                raise CallInvalid("Expecting 'accept.operations' to hold objects")
            if operation.get("type") == "LAUNCH":
                launches += list(enumerate((operation.get("launch") or {}).get("task_infos") or [],
                                           start=len(launches)))
            else:
                log.warning("framework %s: operation %s is not supported; ignored", framework.framework_id,
                            operation.get("type"))
        offers = [framework.offers.pop(oid) for oid in offer_ids if oid in framework.offers]
        problem = None
        missing = [oid for oid in offer_ids if oid not in {o.offer_id for o, _ in offers}]
        if not offer_ids:
            problem = "No offers given"
        elif missing:
            problem = f"Offer {missing[0]} is no longer valid (unknown, answered or rescinded)"
        elif len({offer.agent_id for offer, _ in offers}) > 1:
            problem = "Aggregated offers must belong to the same agent"
        if problem is not None:
            for offer, _ in offers:
                self._return(offer, now, 0.0)
            for index, raw in launches:
                self._refuse_launch(framework, raw, "TASK_DROPPED" if framework.partition_aware else "TASK_LOST",
                                    "REASON_INVALID_OFFERS", problem, index)
            self.poke()
            return
        agent_id = offers[0][0].agent_id
        record = self.registry.get(agent_id)
        left: dict[str, float] = {}
        free_ports: set[int] = set()
        for offer, port_ranges in offers:
            for name, value in offer.resources.items():
                left[name] = left.get(name, 0.0) + value
            for begin, end in port_ranges:
                free_ports.update(range(begin, end + 1))
        used: dict[str, float] = {}
        started: list[FrameworkTask] = []
        for index, raw in launches:
            try:
                spec = task_spec(raw, index)
                self._check_fits(spec, agent_id, left, free_ports)
            except CallInvalid as exc:
                self._refuse_launch(framework, raw, "TASK_ERROR", "REASON_TASK_INVALID", str(exc), index)
                continue
            for name, value in spec.scalars.items():
                left[name] = round(left.get(name, 0.0) - value, 3)
                used[name] = round(used.get(name, 0.0) + value, 3)
            free_ports.difference_update(spec.ports)
            assert record is not None
            started.append(self._new_task(framework, spec, record.registration.ip, record.registration.hostname,
                                          now))
        self._settle_offers(offers, used, now, refuse)
        if started:
            self._dispatch(agent_id, started)
        self.poke()

    def _check_fits(self, spec: TaskSpec, agent_id: str, left: dict[str, float], free_ports: set[int]) -> None:
        if spec.agent_id != agent_id:
            raise CallInvalid(f"Task {spec.task_id} names agent {spec.agent_id}, but the offers are for {agent_id}")
        if spec.task_id in self._task_owner:
            raise CallInvalid(f"Task has duplicate ID: {spec.task_id}")
        if not spec.scalars.get("cpus") and not spec.scalars.get("mem"):
            raise CallInvalid("Task uses no resources: give it 'cpus' or 'mem'")
        over = {name: value for name, value in spec.scalars.items() if value > left.get(name, 0.0) + 1e-9}
        if over:
            wanted = ", ".join(f"{name}:{value:g}" for name, value in over.items())
            have = ", ".join(f"{name}:{left.get(name, 0.0):g}" for name in over)
            raise CallInvalid(f"Task {spec.task_id} uses more resources ({wanted}) than available ({have})")
        taken = [port for port in spec.ports if port not in free_ports]
        if taken:
            spans = ", ".join(f"{b}-{e}" for b, e in ranges_of(taken))
            raise CallInvalid(f"Task {spec.task_id} uses ports [{spans}] that are not in the offer")

    def _settle_offers(self, offers: list[tuple[Offer, list[tuple[int, int]]]], used: dict[str, float], now: float,
                       refuse: float | None) -> None:
        """The used resources stay with the framework (taken from the offers in order); the rest
        goes back, filtered for ``refuse`` seconds."""
        remaining = dict(used)
        for offer, _ in offers:
            part = {name: min(value, remaining.get(name, 0.0)) for name, value in offer.resources.items()}
            part = {name: round(value, 3) for name, value in part.items() if value > 0}
            for name, value in part.items():
                remaining[name] = round(remaining[name] - value, 3)
            try:
                self.allocator.accept(offer, part, now, refuse)
            except (KeyError, ValueError) as exc:
                log.warning("offer %s: %s", offer.offer_id, exc)

    def _refuse_launch(self, framework: Framework, raw: Any, state: str, reason: str, message: str,
                       index: int) -> None:
        task_id = (raw.get("task_id") or {}).get("value", f"<task_infos[{index}]>") if isinstance(raw, dict) else \
            f"<task_infos[{index}]>"
        agent = (raw.get("agent_id") or raw.get("slave_id") or {}) if isinstance(raw, dict) else {}
        log.warning("framework %s: task %s %s: %s", framework.framework_id, task_id, state, message)
        self._send(framework, {"type": "UPDATE", "update": {"status": status_json(
            str(task_id), str(agent.get("value", "")), state, self.clock(), message=message, reason=reason,
            source="SOURCE_MASTER")}})

    def _new_task(self, framework: Framework, spec: TaskSpec, agent_ip: str, hostname: str,
                  now: float) -> FrameworkTask:
        ports = [TaskPort(host_port=port) for port in spec.ports]
        launch = TaskLaunch(
            task_id=spec.task_id, app_id="", name=spec.name, cmd=spec.cmd, args=spec.args, env=spec.env,
            cpus=spec.scalars.get("cpus", 0.0), mem=spec.scalars.get("mem", 0.0), disk=spec.scalars.get("disk", 0.0),
            network="container" if spec.network_name else "host", network_name=spec.network_name, ports=ports,
            labels=spec.labels)
        task = FrameworkTask(
            task_id=spec.task_id, app_id="", name=spec.name, config_version="", version="", agent_id=spec.agent_id,
            agent_ip=agent_ip, hostname=hostname, framework_id=framework.framework_id, role=framework.spec.role,
            staged_at=now, resources=dict(spec.scalars), network="container" if spec.network_name else "host",
            ports=ports, labels=spec.labels, launch=launch.model_dump(), state="TASK_STAGING")
        framework.tasks[task.task_id] = task
        self._task_owner[task.task_id] = framework.framework_id
        self._save_task(task)
        self.on_change()
        return task

    def _dispatch(self, agent_id: str, tasks: list[FrameworkTask]) -> None:
        record = self.registry.get(agent_id)
        if record is None or agent_id in self._launching:
            return
        self._launching.add(agent_id)
        self._spawn(self._launch(AgentAddress(agent_id, record.registration.ip, record.registration.port), tasks))

    async def _launch(self, address: AgentAddress, tasks: list[FrameworkTask]) -> None:
        now = self.clock()
        for task in tasks:
            task.launch_attempts += 1
            task.launch_sent_at = now
            task.launch_next_at = now + LAUNCH_RESEND_SECONDS * min(8, 2 ** (task.launch_attempts - 1))
        try:
            answer = await self.agents.launch_batch(address, [TaskLaunch.model_validate(t.launch) for t in tasks])
        except AgentUnavailable as exc:
            log.warning("agent %s did not take %d framework launches (%s): sent again", address.agent_id,
                        len(tasks), exc)
            answer = LaunchAnswer()
        finally:
            self._launching.discard(address.agent_id)
        for task in tasks:
            if task.terminal:
                continue
            if task.task_id in answer.rejected:
                await self._apply(task, "TASK_ERROR", answer.rejected[task.task_id] or "refused by the agent",
                                  reason="REASON_TASK_INVALID", source="SOURCE_AGENT")
            elif task.task_id in answer.accepted and task.launched_at is None:
                task.launched_at = self.clock()
                self._save_task(task)

    def decline(self, framework: Framework, offer_ids: list[str], refuse: float | None) -> None:
        now = self.clock()
        for offer_id in offer_ids:
            entry = framework.offers.pop(offer_id, None)
            if entry is not None:
                self._return(entry[0], now, refuse)
        self.poke()

    def _return(self, offer: Offer, now: float, refuse: float | None) -> None:
        try:
            self.allocator.decline(offer, now, refuse)
        except KeyError:
            pass

    def _rescind_all(self, framework: Framework, refuse: float, notify: bool) -> None:
        now = self.clock()
        for offer_id, (offer, _ports) in list(framework.offers.items()):
            del framework.offers[offer_id]
            self._return(offer, now, refuse)
            if notify:
                self._send(framework, {"type": "RESCIND", "rescind": {"offer_id": {"value": offer_id}}})

    def kill(self, framework: Framework, task_id: str) -> None:
        task = framework.tasks.get(task_id)
        if task is None:
            self._send(framework, {"type": "UPDATE", "update": {"status": status_json(
                task_id, "", "TASK_LOST", self.clock(), message="Attempted to kill an unknown task",
                reason="REASON_RECONCILIATION", source="SOURCE_MASTER")}})
            return
        self._kill(task)

    def _kill(self, task: FrameworkTask) -> None:
        if task.terminal:
            return
        task.kill_requested = True
        task.kill_sent_at = self.clock()
        self._save_task(task)
        record = self.registry.get(task.agent_id)
        if record is None:
            self._spawn(self._apply(task, "TASK_KILLED", "agent gone", source="SOURCE_MASTER"))
            return
        address = AgentAddress(task.agent_id, record.registration.ip, record.registration.port)

        async def send() -> None:
            try:
                known = await self.agents.kill(address, task.task_id, KILL_GRACE_SECONDS)
            except AgentUnavailable as exc:
                log.warning("kill of %s: %s (asked again)", task.task_id, exc)
                return
            if not known:
                await self._apply(task, "TASK_KILLED", "the agent does not know the task", source="SOURCE_MASTER")

        self._spawn(send())

    def reconcile(self, framework: Framework, asked: list[Any]) -> None:
        """Explicit (task ids) or implicit (none: every task): the latest state, without a uuid."""
        now = self.clock()
        chosen: list[tuple[str, FrameworkTask | None]]
        if not asked:
            chosen = [(task.task_id, task) for task in framework.tasks.values()]
        else:
            chosen = []
            for entry in asked:
                task_id = value_of((entry or {}).get("task_id") if isinstance(entry, dict) else None,
                                   "reconcile.tasks.task_id")
                chosen.append((task_id, framework.tasks.get(task_id)))
        for task_id, task in chosen:
            if task is None:
                status = status_json(task_id, "", "TASK_LOST", now, message="Reconciliation: task is unknown",
                                     reason="REASON_RECONCILIATION", source="SOURCE_MASTER")
            else:
                status = status_json(task.task_id, task.agent_id, task.state, now, reason="REASON_RECONCILIATION",
                                     source="SOURCE_MASTER", healthy=task.healthy, ip_addresses=task.ip_addresses)
            self._send(framework, {"type": "UPDATE", "update": {"status": status}})

    def remove(self, framework: Framework, why: str) -> None:
        """TEARDOWN or failover timeout: its tasks are killed, its resources return, it is gone."""
        log.warning("framework %s (%s) removed (%s): killing %d tasks", framework.framework_id, framework.spec.name,
                    why, len(framework.tasks))
        self._rescind_all(framework, refuse=0.0, notify=False)
        for task in list(framework.tasks.values()):
            task.released = True        # remove_framework below returns what it holds
            self._kill(task)
        try:
            self.allocator.remove_framework(framework.framework_id)
        except KeyError:
            pass
        if framework.subscription is not None:
            framework.subscription.close("Framework has been removed")
            framework.subscription = None
        del self.frameworks[framework.framework_id]
        self.store.delete("frameworks", framework.framework_id)
        self.completed_frameworks = (self.completed_frameworks + [framework.as_json() | {
            "tasks": [], "completed_tasks": [], "active": False, "connected": False}])[-50:]
        self._gone[framework.framework_id] = framework
        self.on_change()
        self.poke()

    # ---- offers ------------------------------------------------------------------------------
    def wants_offers(self) -> bool:
        return any(f.connected and not f.suppressed for f in self.frameworks.values())

    def take_offers(self, offers: list[Offer], now: float) -> list[Offer]:
        """Sends this module's offers to their frameworks (with the agent's free ports); returns
        the others (Marathon's)."""
        rest: list[Offer] = []
        batches: dict[str, list[dict[str, Any]]] = {}
        for offer in offers:
            framework = self.frameworks.get(offer.framework_id)
            if framework is None:
                rest.append(offer)
                continue
            if not framework.connected:
                self._return(offer, now, 0.0)
                continue
            record = self.registry.get(offer.agent_id)
            if record is None:
                self._return(offer, now, 0.0)
                continue
            port_ranges = ranges_of(self._free_ports(offer.agent_id))
            framework.offers[offer.offer_id] = (offer, port_ranges)
            reg = record.registration
            batches.setdefault(framework.framework_id, []).append({
                "id": {"value": offer.offer_id}, "framework_id": {"value": framework.framework_id},
                "agent_id": {"value": offer.agent_id}, "hostname": reg.hostname,
                "url": {"scheme": "http", "address": {"hostname": reg.hostname, "ip": reg.ip, "port": reg.port},
                        "path": "/slave(1)"},
                "resources": resources_json(offer.resources, port_ranges, framework.spec.role),
                "allocation_info": {"role": framework.spec.role},
                "attributes": [{"name": k, "type": "TEXT", "text": {"value": str(v)}}
                               for k, v in reg.attributes.items()]})
        for framework_id, batch in batches.items():
            self._send(self.frameworks[framework_id], {"type": "OFFERS", "offers": {"offers": batch}})
        return rest

    def _free_ports(self, agent_id: str) -> set[int]:
        record = self.registry.get(agent_id)
        if record is None:
            return set()
        free: set[int] = set()
        for span in record.registration.resources.ports:
            free.update(range(span.begin, span.end + 1))
        for task in self.live_tasks():
            if task.agent_id == agent_id:
                free.difference_update(task.host_ports)
        for framework in self.frameworks.values():
            for offer, port_ranges in framework.offers.values():
                if offer.agent_id == agent_id:
                    for begin, end in port_ranges:
                        free.difference_update(range(begin, end + 1))
        return free

    def live_tasks(self) -> list[TaskRecord]:
        """Every live task on the agents, Marathon's and the frameworks' (host ports in use)."""
        tasks: list[TaskRecord] = [t for t in self.marathon_tasks() if not t.terminal]
        for framework in self.frameworks.values():
            tasks += [t for t in framework.tasks.values() if not t.terminal]
        return tasks

    def framework_tasks(self) -> list[FrameworkTask]:
        return [t for f in self.frameworks.values() for t in f.tasks.values()] + \
            [t for f in self._gone.values() for t in f.tasks.values() if not t.terminal]

    # ---- statuses from agents ----------------------------------------------------------------
    def owns(self, task_id: str) -> bool:
        return task_id in self._task_owner

    async def on_status(self, agent_id: str, status: TaskStatus) -> str:
        task = self._task(status.task_id)
        if task is None or task.agent_id != agent_id:
            return "unknown task"
        if task.terminal:
            return "ok"
        if status.ip_addresses:
            task.ip_addresses = list(status.ip_addresses)
        if status.ports:
            task.ports = status.ports
        if status.healthy is not None:
            task.healthy = status.healthy
        if status.state == task.state and not status.message:
            self._save_task(task)
            return "ok"
        await self._apply(task, status.state, status.message, source="SOURCE_EXECUTOR")
        return "ok"

    async def _apply(self, task: FrameworkTask, state: str, message: str, reason: str | None = None,
                     source: str = "SOURCE_EXECUTOR") -> None:
        """A new state for the task: recorded, sent as an UPDATE with a uuid (kept until
        acknowledged); a terminal one releases its resources."""
        if task.terminal:
            return
        now = self.clock()
        task.state = state
        task.message = message
        task.last_reason = reason
        if state == "TASK_RUNNING" and task.started_at is None:
            task.started_at = now
        task.statuses = (task.statuses + [{"state": state, "timestamp": now}])[-10:]
        status_uuid = new_status_uuid()
        status = status_json(task.task_id, task.agent_id, state, now, message=message, reason=reason, source=source,
                             status_uuid=status_uuid, healthy=task.healthy, ip_addresses=task.ip_addresses)
        framework = self.frameworks.get(task.framework_id)
        if framework is not None:
            framework.pending[status_uuid] = PendingUpdate(status, now + UPDATE_RETRY_SECONDS)
            self._send(framework, {"type": "UPDATE", "update": {"status": status}})
        if task.terminal:
            self._terminated(task)
        else:
            self._save_task(task)
        self.on_change()

    def _terminated(self, task: FrameworkTask) -> None:
        if not task.released:
            task.released = True
            try:
                self.allocator.release(task.framework_id, task.agent_id, task.resources)
            except (KeyError, ValueError) as exc:
                log.warning("release of %s on %s: %s", task.task_id, task.agent_id, exc)
        owner = self.frameworks.get(task.framework_id) or self._gone.get(task.framework_id)
        if owner is not None:
            owner.tasks.pop(task.task_id, None)
        self._task_owner.pop(task.task_id, None)
        self.store.delete("framework_tasks", task.task_id)
        self.completed_tasks = (self.completed_tasks + [task])[-COMPLETED_KEEP:]
        self.poke()

    def _task(self, task_id: str) -> FrameworkTask | None:
        framework_id = self._task_owner.get(task_id)
        owner = self.frameworks.get(framework_id or "") or self._gone.get(framework_id or "")
        return owner.tasks.get(task_id) if owner else None

    def reconciled(self, agent_id: str, reported: set[str], asked_at: float) -> None:
        """An agent listed what it runs: a task launched (and acknowledged) before the question
        that it does not list is lost; one never acknowledged is sent again."""
        for task in list(self.framework_tasks()):
            if task.agent_id != agent_id or task.task_id in reported or task.terminal:
                continue
            if task.launched_at is not None and task.launched_at <= asked_at:
                self._spawn(self._apply(task, "TASK_LOST", f"agent {agent_id} does not run it anymore",
                                        reason="REASON_RECONCILIATION", source="SOURCE_MASTER"))
            elif task.launched_at is None:
                task.launch_next_at = 0.0

    def agent_lost(self, agent_id: str, why: str) -> None:
        """The agent is unreachable or removed (the allocator has dropped it): offers of it are
        rescinded and its framework tasks end TASK_LOST (``REASON_AGENT_REMOVED``), as Mesos
        tells frameworks; a task seen again later is killed by reconciliation."""
        for framework in self.frameworks.values():
            for offer_id, (offer, _ports) in list(framework.offers.items()):
                if offer.agent_id == agent_id:
                    del framework.offers[offer_id]
                    self._send(framework, {"type": "RESCIND", "rescind": {"offer_id": {"value": offer_id}}})
        for task in list(self.framework_tasks()):
            if task.agent_id == agent_id and not task.terminal:
                task.released = True    # the allocator already dropped the agent
                self._spawn(self._apply(task, "TASK_LOST", why, reason="REASON_AGENT_REMOVED",
                                        source="SOURCE_MASTER"))

    # ---- time ----------------------------------------------------------------------------------
    def tick(self, now: float | None = None) -> None:
        """Stalled streams, failover timeouts, unacknowledged updates, unanswered launches."""
        now = self.clock() if now is None else now
        for framework in list(self.frameworks.values()):
            subscription = framework.subscription
            if subscription is not None and not subscription.closed and \
                    now - subscription.delivered_at > self.heartbeat_seconds * MISSED_HEARTBEATS:
                self._disconnect(framework, f"nothing delivered for {MISSED_HEARTBEATS} heartbeats")
            if framework.disconnected_at is not None and \
                    now - framework.disconnected_at >= framework.spec.failover_timeout:
                self.remove(framework, f"failover timeout of {framework.spec.failover_timeout:g}s passed")
                continue
            if framework.connected:
                for pending in framework.pending.values():
                    if pending.next_at <= now:
                        pending.attempts += 1
                        pending.next_at = now + min(UPDATE_RETRY_SECONDS * 2 ** (pending.attempts - 1),
                                                    UPDATE_RETRY_MAX_SECONDS)
                        self._send(framework, {"type": "UPDATE", "update": {"status": pending.status}})
        due: dict[str, list[FrameworkTask]] = {}
        for task in self.framework_tasks():
            if task.state == "TASK_STAGING" and task.launched_at is None and not task.kill_requested \
                    and task.launch_next_at <= now:
                due.setdefault(task.agent_id, []).append(task)
            elif task.kill_requested and not task.terminal and task.kill_sent_at is not None \
                    and now - task.kill_sent_at > KILL_GRACE_SECONDS + 5.0:
                self._kill(task)
        for agent_id, tasks in due.items():
            record = self.registry.get(agent_id)
            if record is not None and record.reachable:
                self._dispatch(agent_id, tasks)
        self._forget_gone()

    def _forget_gone(self) -> None:
        for framework_id, framework in list(self._gone.items()):
            if not framework.tasks:
                del self._gone[framework_id]

    async def run(self, interval: float = 0.5) -> None:
        """Ticks until cancelled; cancelled (the master stops), it ends every event stream, so
        the servers can finish their responses and frameworks re-subscribe elsewhere."""
        try:
            while True:
                try:
                    self.tick()
                except Exception:
                    log.exception("framework tick failed")
                await asyncio.sleep(interval)
        finally:
            self.close_streams()

    def close_streams(self) -> None:
        """Ends every subscription's stream (idempotent); the frameworks stay registered."""
        for framework in self.frameworks.values():
            if framework.subscription is not None:
                framework.subscription.close()

    # ---- helpers -------------------------------------------------------------------------------
    def _send(self, framework: Framework, event: dict[str, Any]) -> None:
        subscription = framework.subscription
        if subscription is not None and not subscription.closed:
            subscription.queue.put_nowait(event)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._pending_io.add(task)
        task.add_done_callback(self._pending_io.discard)

    async def settle(self) -> None:
        while self._pending_io:
            await asyncio.gather(*list(self._pending_io), return_exceptions=True)


def _refuse(body: dict[str, Any]) -> float | None:
    filters = body.get("filters")
    if not isinstance(filters, dict) or "refuse_seconds" not in filters:
        return None
    seconds = filters["refuse_seconds"]
    if not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds < 0:
        raise CallInvalid("Expecting 'filters.refuse_seconds' to be a number of seconds ≥ 0")
    return float(seconds)


def view_parts(frameworks: Frameworks, live_states: tuple[str, ...]) -> tuple[list[FrameworkInfo], list[TaskInfo]]:
    """The frameworks and their live tasks as the cluster view carries them (Mesos-DNS gives
    each task ``<task name>.<framework name>.mesos``)."""
    infos: list[FrameworkInfo] = []
    tasks: list[TaskInfo] = []
    for framework in frameworks.frameworks.values():
        infos.append(FrameworkInfo(framework_id=framework.framework_id, name=framework.spec.name,
                                   hostname=framework.ip or "127.0.0.1", ip=framework.ip or "127.0.0.1", port=0))
        for task in sorted(framework.tasks.values(), key=lambda t: t.task_id):
            if task.state in live_states:
                tasks.append(TaskInfo(task_id=task.task_id, app_id="", name=task.name, framework=framework.spec.name,
                                      agent_id=task.agent_id, agent_ip=task.agent_ip, state=task.state,  # type: ignore[arg-type]
                                      healthy=task.healthy, network=task.network, ip_addresses=task.ip_addresses,
                                      ports=task.ports, labels=task.labels))
    return infos, tasks


def metric_families(frameworks: Frameworks, allocator: Allocator, marathon: Iterable[str]) -> Iterator[Metric]:
    """``navstar_master_frameworks{state}``, ``navstar_master_framework_tasks{state}``,
    ``navstar_master_framework_unacknowledged_updates``, ``navstar_master_scheduler_calls_refused_total``
    and ``navstar_master_dominant_share{framework}`` (every framework, Marathon's roles included:
    held resources, offers counted, ÷ the cluster's)."""
    states = GaugeMetricFamily("navstar_master_frameworks", "v1 scheduler API frameworks by state", labels=["state"])
    known = list(frameworks.frameworks.values())
    states.add_metric(["connected"], sum(1 for f in known if f.connected))
    states.add_metric(["disconnected"], sum(1 for f in known if not f.connected))
    yield states
    tasks = GaugeMetricFamily("navstar_master_framework_tasks", "Live tasks of v1 frameworks by state",
                              labels=["state"])
    counts: dict[str, int] = {}
    for task in frameworks.framework_tasks():
        counts[task.state] = counts.get(task.state, 0) + 1
    for state in ("TASK_STAGING", "TASK_STARTING", "TASK_RUNNING", "TASK_KILLING"):
        tasks.add_metric([state], counts.get(state, 0))
    yield tasks
    yield GaugeMetricFamily("navstar_master_framework_unacknowledged_updates", "Status updates awaiting ACKNOWLEDGE",
                            value=sum(len(f.pending) for f in known))
    yield CounterMetricFamily("navstar_master_scheduler_calls_refused", "Scheduler API calls answered 4xx/5xx",
                              value=frameworks.calls_refused)
    shares = GaugeMetricFamily("navstar_master_dominant_share", "Each framework's dominant share of the cluster",
                               labels=["framework"])
    names = {f.framework_id: f.spec.name for f in known} | {framework_id: framework_id for framework_id in marathon}
    for framework_id, share in sorted(allocator.shares().items()):
        shares.add_metric([names.get(framework_id, framework_id)], share)
    yield shares
