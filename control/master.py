"""The master: agent registry, scheduler, cluster view, named VIPs and persistence.

The domain object its HTTP faces (``control/http``) take: it holds no routes. ``background()``
gives the loops the composition root runs next to the servers: the scheduler cycle and the
agent pinger.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

from cluster.ipam import OverlayIpam
from cluster.view import AgentInfo, ClusterView, FrameworkInfo, OverlayConfig, TaskInfo
from cluster.vip_labels import app_vip_claims, named_vip, vip_label_problems
from control.agent.images import ImageMap
from control.agent_client import AgentAddress, AgentClient, HttpAgentClient
from control.app_changes import stamp_app
from control.app_versions import AppVersions
from control.deployment_plan import with_dependencies_checked
from control.deployments import Deployment, PlanAction
from control.drf import Allocator
from control.events import EventBus
from control.frameworks import HEARTBEAT_SECONDS, Frameworks, view_parts
from control.groups import GroupRecords
from control.marathon_models import AppDefinition, AppExists, marathon_task_name
from control.protocol import TaskStatus
from control.registry import AgentRegistration, AgentRegistry
from control.scheduler import Scheduler
from control.state import StateStore, write_refusal
from control.store import SqliteStore
from control.view_pacing import ViewWakeups
from control.vips import VipAllocator

log = logging.getLogger("navstar.master")

LIVE_STATES = ("TASK_STAGING", "TASK_STARTING", "TASK_RUNNING", "TASK_KILLING", "TASK_UNREACHABLE")
MAX_VIEW_WAIT = 60.0
CLUSTER_SECRET_SOURCE = "navstar/cluster-secret"     # Marathon secret source naming the cluster secret


class Master:
    def __init__(self, secret: str | None = None, agent_timeout: float = 75.0, state_dir: str | None = None,
                 agent_client: AgentClient | None = None, ping_interval: float | None = None,
                 clock: Callable[[], float] = time.time, advertise_ip: str | None = None,
                 mesos_port: int = 5050, marathon_port: int = 8080,
                 image_map: ImageMap | None = None, overlay: OverlayConfig | None = None,
                 store: StateStore | None = None, framework_heartbeat: float = HEARTBEAT_SECONDS) -> None:
        """``store``: where state lives (default: SQLite in ``state_dir``, in memory without one)."""
        self.secret = secret
        # The agents' image map (apps naming an image but no command are checked against it).
        self.image_map = image_map or ImageMap()
        self.agent_timeout = agent_timeout
        # 5 missed pings make an agent unreachable (Mesos' default: 15 s × 5).
        self.ping_interval = ping_interval if ping_interval is not None else max(0.2, agent_timeout / 5)
        self.clock = clock
        # Without --mesos-listen host the address is learnt from the first request that reaches
        # us over a real interface (what agents and operators connect to).
        self.advertise_ip = advertise_ip or "127.0.0.1"
        self.learning_address = advertise_ip is None
        self.mesos_port = mesos_port
        self.marathon_port = marathon_port
        self.store: StateStore = store if store is not None else SqliteStore(state_dir)
        self.master_id = self.store.get("meta", "master_id") or f"navstar-{uuid.uuid4()}"
        self.store.put("meta", "master_id", self.master_id)
        self.started_at = clock()
        self.registry = AgentRegistry(clock=clock)
        self.allocator = Allocator()
        self.events = EventBus()
        self.agent_client = agent_client or HttpAgentClient(secret)
        self.scheduler = Scheduler(self.registry, self.allocator, self.agent_client, self.store, self.events,
                                   clock=clock, on_change=self.view_changed)
        # The v1 scheduler API's frameworks, next to Marathon under the same allocator.
        self.frameworks = Frameworks(self.registry, self.allocator, self.agent_client, self.store, self.master_id,
                                     clock=clock, on_change=self.view_changed, poke=self.scheduler.poke,
                                     heartbeat_seconds=framework_heartbeat,
                                     marathon_tasks=lambda: self.scheduler.tasks.values())
        self.scheduler.guests = self.frameworks
        # In-cluster API clients run as apps (marathon-lb): secret source "navstar/cluster-secret".
        self.scheduler.secret_source = lambda source: secret if source == CLUSTER_SECRET_SOURCE else None
        self.vips = VipAllocator(dict(self.store.items("vips")),
                                 next_address=self.store.get("meta", "vip_next_address"))
        self.overlay = overlay or OverlayConfig()
        snapshot = self.store.get("allocations", "overlay")
        self.ipam = OverlayIpam.restore(snapshot, self.overlay) if snapshot else OverlayIpam(self.overlay)
        # A restarted master serves a newer version, so every agent fetches the view again.
        self.view_version = int(self.store.get("meta", "view_version", 0)) + 1
        self._view_waiters: dict[asyncio.Future, int] = {}     # long-poll → the version it holds
        self._vip_names: dict[str, set[str]] = {}      # app id → its named VIPs (sync_vips)
        # When the long-polls are woken: at once after a quiet spell, else folded (control/view_pacing.py).
        self.view_wakeups = ViewWakeups(self._wake_view_waiters)
        self._view_cache: ClusterView | None = None
        self.rejected_statuses = 0
        self.versions = AppVersions(self.store)          # every stored app definition (issue 19)
        self.groups = GroupRecords(self.store)           # groups' own fields (apps are in scheduler.apps)
        apply_action = self.scheduler.deployments.apply

        def apply_and_sync(action: PlanAction) -> None:
            # An app a later deployment step stores gets its named VIPs then.
            apply_action(action)
            self.sync_vips(action.app_id)

        self.scheduler.deployments.apply = apply_and_sync
        self._load()

    # ---- state ---------------------------------------------------------------------------
    def _load(self) -> None:
        for _agent_id, raw in self.store.items("agents"):
            registration = AgentRegistration.model_validate(raw)
            # A fresh grace period: the agent has agent_timeout to show up again.
            self.registry.register(registration)
            self.allocator.add_agent(registration.agent_id, _totals(registration), registration.role)
        self.scheduler.load()
        self.frameworks.load()
        self.versions.load()
        self.groups.load()
        for app in self.scheduler.apps.values():
            if app.version and not self.versions.has(app.id):
                self.versions.record(app)       # apps stored before versions were kept
        self.sync_vips()
        self.store.put("meta", "view_version", self.view_version)

    def view_changed(self) -> None:
        self.view_version += 1
        self._view_cache = None
        self.store.put("meta", "view_version", self.view_version)
        self.view_wakeups.changed()

    def _wake_view_waiters(self) -> int:
        """Answers the long-polls that hold an older view than this one; says how many. One that
        already holds it (it was answered after the change that set the wake-up) waits on."""
        woken = 0
        for waiter, since in list(self._view_waiters.items()):
            if since != self.view_version and not waiter.done():
                waiter.set_result(None)
                woken += 1
        return woken

    def sync_vips(self, app_id: str | None = None) -> None:
        """Named VIPs of every app get one address each; unused ones are freed. With ``app_id``
        only that app changed (its names are looked at again, the others' are remembered), so a
        burst of apps costs each one its own labels, not every app's."""
        apps = self.scheduler.apps
        if app_id is None:
            self._vip_names = {a: _named_vips(app) for a, app in apps.items()}
        elif app_id in apps:
            self._vip_names[app_id] = _named_vips(apps[app_id])
        else:
            self._vip_names.pop(app_id, None)
        names: set[str] = set().union(*self._vip_names.values())
        before = dict(self.vips.allocations)
        if self.vips.sync(names):
            for key in set(before) - set(self.vips.allocations):
                self.store.delete("vips", key)
            added = {key: address for key, address in self.vips.allocations.items() if before.get(key) != address}
            for key, address in added.items():
                self.store.put("vips", key, address)
            self.store.put("meta", "vip_next_address", self.vips.next_address)
            log.info("named VIPs: %d (%s)", len(self.vips.allocations),
                     ", ".join(f"{k} → {v}" for k, v in list(added.items())[:5]) or "some freed")
            self.view_changed()

    # ---- apps (the Marathon API, and any other caller, go through these) ------------------
    def put_app(self, app: AppDefinition, *, create: bool = False, restart: bool = False,
                force: bool = False) -> tuple[AppDefinition, Deployment]:
        """Stores a validated app, new or changed, and starts its deployment; returns the app as
        stored (version, service ports) and the deployment. A change of ``instances`` alone
        scales (tasks keep running); anything else, or ``restart``, replaces the tasks. Named
        VIPs get their addresses and label problems are published before it returns.

        Raises ``AppExists`` with ``create`` when the id is taken, ``AppLocked`` when the app
        has a deployment running (unless ``force``), ``AppInvalid`` when no service port is left,
        a service port is another app's or a dependency names nothing or closes a cycle;
        nothing changes then."""
        previous = self.scheduler.apps.get(app.id)
        if previous is not None and create:
            raise AppExists(app.id)
        if previous is not None:
            self.scheduler.deployments.check_lock(app.id, force)
        else:
            self.scheduler.deployments.check_create(app.id, force)
        app = with_dependencies_checked(app, self.scheduler.apps, self.groups.dependencies(), self.groups.records)
        others = [other for other in self.scheduler.apps.values() if other.id != app.id]
        app, scaling_only = stamp_app(app, previous, others, self.clock(), restart=restart)
        action = "StartApplication" if previous is None else \
            "ScaleApplication" if scaling_only else "RestartApplication"
        self.versions.record(app)
        deployment = self.scheduler.put_app(app, action)
        self.sync_vips(app.id)
        self.report_vip_labels(app)
        return app, deployment

    def restart_app(self, app_id: str, force: bool = False) -> tuple[AppDefinition, Deployment]:
        """Replaces every task of the app with a new config version. Raises ``KeyError`` for an
        unknown app, ``AppLocked`` as ``put_app``."""
        return self.put_app(self.scheduler.apps[app_id].model_copy(), restart=True, force=force)

    def remove_app(self, app_id: str, force: bool = False) -> Deployment:
        """Forgets the app (its tasks are killed by the next cycles) and frees its named VIPs.
        Raises ``AppLocked`` while a deployment runs (unless ``force``); an unknown id only
        starts an empty ``StopApplication`` deployment."""
        self.scheduler.deployments.check_lock(app_id, force)
        deployment = self.scheduler.remove_app(app_id)
        self.versions.forget(app_id)
        self.sync_vips(app_id)
        return deployment

    def report_vip_labels(self, app: AppDefinition) -> None:
        """Problems with an app's VIP labels go on the event bus (``vip_label_problem_event``, for
        each app concerned) and into the log as the app is stored; agents skip what they cannot serve."""
        claims, _ = app_vip_claims(app.id, app.port_labels(), app.port_protocols())
        # Only an address VIP can clash with another app's: without one, the others do not matter.
        others = {other.id: (other.port_labels(), other.port_protocols()) for other in self.scheduler.apps.values()
                  if claims and other.id != app.id}
        for problem in vip_label_problems(app.id, app.port_labels(), app.port_protocols(), others):
            log.warning("app %s: %s", problem.app_id, problem.message)
            self.events.publish("vip_label_problem_event", appId=problem.app_id, message=problem.message)

    def learn_address(self, host: str) -> None:
        """The address clients reach us on, learnt once (without ``--mesos-listen`` host)."""
        if self.learning_address and host != self.advertise_ip:
            self.advertise_ip = host
            self.view_changed()
        self.learning_address = False

    @property
    def marathon_framework_id(self) -> str:
        """Marathon's Mesos framework id, as ``/master/state`` and the view name it."""
        return f"{self.master_id}-0000"

    def view(self) -> ClusterView:
        if self._view_cache is not None and self._view_cache.version == self.view_version:
            return self._view_cache
        agents = [
            AgentInfo(agent_id=r.registration.agent_id, hostname=r.registration.hostname, ip=r.registration.ip,
                      port=r.registration.port, reachable=r.reachable, overlay=self.ipam.get(r.registration.agent_id),
                      networks=r.registration.networks)
            for r in self.registry.all()]
        tasks = [
            TaskInfo(task_id=t.task_id, app_id=t.app_id, name=marathon_task_name(t.app_id), agent_id=t.agent_id,
                     agent_ip=t.agent_ip, state=t.state, healthy=t.healthy, network=t.network,  # type: ignore[arg-type]
                     ip_addresses=t.ip_addresses, ports=t.ports, labels=t.labels)
            for t in sorted(self.scheduler.tasks.values(), key=lambda t: t.task_id) if t.state in LIVE_STATES]
        marathon = FrameworkInfo(framework_id=self.marathon_framework_id, name="marathon", hostname=self.advertise_ip,
                                 ip=self.advertise_ip, port=self.marathon_port)
        others, other_tasks = view_parts(self.frameworks, LIVE_STATES)
        self._view_cache = ClusterView(version=self.view_version, master_ip=self.advertise_ip,
                                       master_port=self.mesos_port, frameworks=[marathon, *others], agents=agents,
                                       tasks=tasks + other_tasks, vip_addresses=dict(self.vips.allocations),
                                       overlay=self.overlay)
        return self._view_cache

    async def wait_view(self, since: int, wait: float) -> ClusterView:
        """The view once its version differs from ``since`` (at most ``wait`` seconds, capped at
        MAX_VIEW_WAIT); changes are handed out as ``view_wakeups`` paces them."""
        woken = False
        if wait > 0 and (self.view_version == since or self.view_wakeups.pending):
            waiter = asyncio.get_running_loop().create_future()
            self._view_waiters[waiter] = since
            try:
                await asyncio.wait_for(waiter, min(wait, MAX_VIEW_WAIT))
                woken = True
            except TimeoutError:
                pass
            finally:
                self._view_waiters.pop(waiter, None)
        view = self.view()
        if wait > 0 and view.version != since:
            # Woken, or back from the last view while the next was already out: either way this
            # answer is part of handing the version out (the fan-out's cost).
            self.view_wakeups.served(woken=woken)
        return view

    # ---- agents --------------------------------------------------------------------------
    def register_agent(self, registration: AgentRegistration) -> None:
        """Raises ``IpamError`` (nothing changed) when the overlay has no room for a new agent."""
        # The overlay first: a full pool must refuse the agent before anything else knows it.
        self.ipam.allocate(registration.agent_id)
        previous = self.registry.get(registration.agent_id)
        self.registry.register(registration)
        self.store.put("agents", registration.agent_id, registration.model_dump())
        self.allocator.add_agent(registration.agent_id, _totals(registration), registration.role)
        self.store.put("allocations", "overlay", self.ipam.snapshot())
        if previous is None or not previous.reachable or previous.registration != registration:
            self.view_changed()
        self.scheduler.reconcile_soon(registration.agent_id)
        self.scheduler.poke()

    def agent_heard(self, agent_id: str) -> bool:
        """Something came from the agent (heartbeat, status, ping answer): it is reachable; one
        back from unreachable is offered again and reconciled. Idempotent; False for an unknown agent."""
        record = self.registry.get(agent_id)
        if record is None:
            return False
        was_reachable = record.reachable
        self.registry.heartbeat(agent_id)
        if not was_reachable:
            log.info("agent %s is reachable again", agent_id)
            self.allocator.add_agent(agent_id, _totals(record.registration), record.registration.role)
            self.scheduler.reconcile_soon(agent_id)
            self.view_changed()
            self.scheduler.poke()
        return True

    async def task_status(self, agent_id: str, status: TaskStatus) -> str:
        """One task status from an agent (which is thereby heard from). Returns what happened."""
        self.agent_heard(agent_id)
        return await self.scheduler.on_status(agent_id, status)

    def count_rejected_agent_message(self) -> None:
        """An agent sent garbage (counted in ``navstar_master_rejected_agent_messages_total``)."""
        self.rejected_statuses += 1

    def remove_agent(self, agent_id: str, force: bool = False) -> str | None:
        """Removes an agent for good: its tasks are lost and replaced, its overlay allocation is
        returned. Only an unreachable agent, unless ``force``. Returns why not, or None."""
        record = self.registry.get(agent_id)
        if record is None:
            return f"agent {agent_id} is not registered"
        if record.reachable and not force:
            return f"agent {agent_id} is reachable; stop it first or force the removal"
        self.scheduler.agent_removed(agent_id)
        self.frameworks.agent_lost(agent_id, f"agent {agent_id} was removed")
        self.registry.remove(agent_id)
        self.store.delete("agents", agent_id)
        try:
            self.allocator.remove_agent(agent_id)
        except KeyError:
            pass
        self.ipam.release(agent_id)
        self.store.put("allocations", "overlay", self.ipam.snapshot())
        log.info("agent %s removed; its overlay allocation is free again", agent_id)
        self.view_changed()
        return None

    def check_agents(self) -> list[str]:
        """Marks agents silent for ``agent_timeout`` unreachable; their tasks are replaced."""
        newly = self.registry.mark_stale(self.agent_timeout)
        for agent_id in newly:
            log.warning("agent %s unreachable (nothing heard for %.0fs)", agent_id, self.agent_timeout)
            try:
                self.allocator.remove_agent(agent_id)
            except KeyError:
                pass
            self.scheduler.agent_unreachable(agent_id)
            self.frameworks.agent_lost(agent_id, f"agent {agent_id} is unreachable")
            self.view_changed()
        return newly

    async def ping_agents(self) -> None:
        records = self.registry.all()

        async def one(record) -> None:
            reg = record.registration
            if await self.agent_client.ping(AgentAddress(reg.agent_id, reg.ip, reg.port)):
                self.agent_heard(reg.agent_id)

        await asyncio.gather(*(one(r) for r in records))

    async def watch_agents(self, interval: float | None = None) -> None:
        # After a restart, ask every known agent what it runs (tasks may have ended meanwhile).
        await asyncio.gather(*(self.scheduler.reconcile(r.registration.agent_id) for r in self.registry.all()))
        while True:
            try:
                await self.ping_agents()
                if write_refusal(self.store) is None:     # marking tasks unreachable writes them
                    self.check_agents()
            except Exception:
                log.exception("agent check failed")
            await asyncio.sleep(interval or self.ping_interval)

    def background(self) -> list[Coroutine[Any, Any, None]]:
        return [self.scheduler.run(), self.watch_agents(), self.frameworks.run()]

    def close(self) -> None:
        self.view_wakeups.cancel()
        self.store.close()


def _named_vips(app: AppDefinition) -> set[str]:
    return {name for labels in app.port_labels() for key, value in labels.items()
            if (name := named_vip(key, value))}


def _totals(registration: AgentRegistration) -> dict[str, float]:
    res = registration.resources
    totals = {"cpus": res.cpus, "mem": res.mem, "disk": res.disk, "gpus": res.gpus}
    return {k: float(v) for k, v in totals.items() if v > 0}

