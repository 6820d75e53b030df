"""The master: agent registry, scheduler, cluster view and persistence behind two HTTP ports.

``mesos_app()`` (default :5050): agent registration, heartbeats and task statuses, the cluster
view agents long-poll (``/v1/view``), Mesos ``/master/state``. ``marathon_app()`` (default
:8080): the Marathon REST API (``control/marathon_api.py``). ``background()`` gives the loops the
composition root runs next to the servers: the scheduler cycle and the agent pinger.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from cluster.ipam import IpamError, OverlayIpam
from cluster.view import AgentInfo, ClusterView, FrameworkInfo, OverlayConfig, TaskInfo
from cluster.vip_labels import named_vip, vip_label_problems
from control.agent.images import ImageMap
from control.agent_client import AgentAddress, AgentClient, HttpAgentClient
from control.api_auth import TokenAuth
from control.drf import Allocator
from control.events import EventBus
from control.master_metrics import MasterMetrics
from control.mesos_state import mesos_state
from control.protocol import TaskStatus
from control.registry import AgentRegistration, AgentRegistry
from control.scheduler import Scheduler
from control.store import Store
from control.vips import VipAllocator

log = logging.getLogger("navstar.master")

LIVE_STATES = ("TASK_STAGING", "TASK_STARTING", "TASK_RUNNING", "TASK_KILLING", "TASK_UNREACHABLE")
MAX_VIEW_WAIT = 60.0


class Master:
    def __init__(self, secret: str | None = None, agent_timeout: float = 75.0, state_dir: str | None = None,
                 agent_client: AgentClient | None = None, ping_interval: float | None = None,
                 clock: Callable[[], float] = time.time, advertise_ip: str | None = None,
                 mesos_port: int = 5050, marathon_port: int = 8080,
                 image_map: ImageMap | None = None, overlay: OverlayConfig | None = None) -> None:
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
        self._learn_address = advertise_ip is None
        self.mesos_port = mesos_port
        self.marathon_port = marathon_port
        self.store = Store(state_dir)
        self.master_id = self.store.get("meta", "master_id") or f"navstar-{uuid.uuid4()}"
        self.store.put("meta", "master_id", self.master_id)
        self.started_at = clock()
        self.registry = AgentRegistry(clock=clock)
        self.allocator = Allocator()
        self.events = EventBus()
        self.agent_client = agent_client or HttpAgentClient(secret)
        self.scheduler = Scheduler(self.registry, self.allocator, self.agent_client, self.store, self.events,
                                   clock=clock, on_change=self.view_changed)
        self.vips = VipAllocator(dict(self.store.items("vips")),
                                 next_address=self.store.get("meta", "vip_next_address"))
        self.overlay = overlay or OverlayConfig()
        snapshot = self.store.get("allocations", "overlay")
        self.ipam = OverlayIpam.restore(snapshot, self.overlay) if snapshot else OverlayIpam(self.overlay)
        # A restarted master serves a newer version, so every agent fetches the view again.
        self.view_version = int(self.store.get("meta", "view_version", 0)) + 1
        self._view_waiters: set[asyncio.Future] = set()
        self._view_cache: ClusterView | None = None
        self.rejected_statuses = 0
        self._load()
        self.metrics = MasterMetrics(self)

    # ---- state ---------------------------------------------------------------------------
    def _load(self) -> None:
        for _agent_id, raw in self.store.items("agents"):
            registration = AgentRegistration.model_validate(raw)
            # A fresh grace period: the agent has agent_timeout to show up again.
            self.registry.register(registration)
            self.allocator.add_agent(registration.agent_id, _totals(registration))
        self.scheduler.load()
        self.sync_vips()
        self.store.put("meta", "view_version", self.view_version)

    def view_changed(self) -> None:
        self.view_version += 1
        self._view_cache = None
        self.store.put("meta", "view_version", self.view_version)
        for waiter in list(self._view_waiters):
            if not waiter.done():
                waiter.set_result(None)

    def sync_vips(self) -> None:
        """Named VIPs of every app get one address each; unused ones are freed."""
        names = {name for app in self.scheduler.apps.values() for labels in app.port_labels()
                 for key, value in labels.items() if (name := named_vip(key, value))}
        before = dict(self.vips.allocations)
        if self.vips.sync(names):
            for key in set(before) - set(self.vips.allocations):
                self.store.delete("vips", key)
            for key, address in self.vips.allocations.items():
                self.store.put("vips", key, address)
            self.store.put("meta", "vip_next_address", self.vips.next_address)
            log.info("named VIPs: %s", self.vips.allocations)
            self.view_changed()

    def report_vip_labels(self, app) -> None:
        """Problems with an app's VIP labels go on the event bus (``vip_label_problem_event``, for
        each app concerned) and into the log as the app is stored; agents skip what they cannot serve."""
        others = {other.id: (other.port_labels(), other.port_protocols()) for other in self.scheduler.apps.values()}
        for problem in vip_label_problems(app.id, app.port_labels(), app.port_protocols(), others):
            log.warning("app %s: %s", problem.app_id, problem.message)
            self.events.publish("vip_label_problem_event", appId=problem.app_id, message=problem.message)

    @property
    def marathon_framework_id(self) -> str:
        """Marathon's Mesos framework id, as ``/master/state`` and the view name it."""
        return f"{self.master_id}-0000"

    def view(self) -> ClusterView:
        if self._view_cache is not None and self._view_cache.version == self.view_version:
            return self._view_cache
        agents = [
            AgentInfo(agent_id=r.registration.agent_id, hostname=r.registration.hostname, ip=r.registration.ip,
                      port=r.registration.port, reachable=r.reachable, overlay=self.ipam.get(r.registration.agent_id))
            for r in self.registry.all()]
        tasks = [
            TaskInfo(task_id=t.task_id, app_id=t.app_id, name=_task_name(t.app_id), agent_id=t.agent_id,
                     agent_ip=t.agent_ip, state=t.state, healthy=t.healthy, network=t.network,  # type: ignore[arg-type]
                     ip_addresses=t.ip_addresses, ports=t.ports, labels=t.labels)
            for t in sorted(self.scheduler.tasks.values(), key=lambda t: t.task_id) if t.state in LIVE_STATES]
        marathon = FrameworkInfo(framework_id=self.marathon_framework_id, name="marathon", hostname=self.advertise_ip,
                                 ip=self.advertise_ip, port=self.marathon_port)
        self._view_cache = ClusterView(version=self.view_version, master_ip=self.advertise_ip,
                                       master_port=self.mesos_port, frameworks=[marathon], agents=agents,
                                       tasks=tasks, vip_addresses=dict(self.vips.allocations),
                                       overlay=self.overlay)
        return self._view_cache

    async def wait_view(self, since: int, wait: float) -> ClusterView:
        if self.view_version == since and wait > 0:
            waiter = asyncio.get_running_loop().create_future()
            self._view_waiters.add(waiter)
            try:
                await asyncio.wait_for(waiter, min(wait, MAX_VIEW_WAIT))
            except TimeoutError:
                pass
            finally:
                self._view_waiters.discard(waiter)
        return self.view()

    # ---- agents --------------------------------------------------------------------------
    def register_agent(self, registration: AgentRegistration) -> None:
        """Raises ``IpamError`` (nothing changed) when the overlay has no room for a new agent."""
        # The overlay first: a full pool must refuse the agent before anything else knows it.
        self.ipam.allocate(registration.agent_id)
        previous = self.registry.get(registration.agent_id)
        self.registry.register(registration)
        self.store.put("agents", registration.agent_id, registration.model_dump())
        self.allocator.add_agent(registration.agent_id, _totals(registration))
        self.store.put("allocations", "overlay", self.ipam.snapshot())
        if previous is None or not previous.reachable or previous.registration != registration:
            self.view_changed()
        self.scheduler._spawn(self.scheduler.reconcile(registration.agent_id))
        self.scheduler.poke()

    def _agent_seen(self, agent_id: str) -> bool:
        record = self.registry.get(agent_id)
        if record is None:
            return False
        was_reachable = record.reachable
        self.registry.heartbeat(agent_id)
        if not was_reachable:
            log.info("agent %s is reachable again", agent_id)
            self.allocator.add_agent(agent_id, _totals(record.registration))
            self.scheduler._spawn(self.scheduler.reconcile(agent_id))
            self.view_changed()
            self.scheduler.poke()
        return True

    def remove_agent(self, agent_id: str, force: bool = False) -> str | None:
        """Removes an agent for good: its tasks are lost and replaced, its overlay allocation is
        returned. Only an unreachable agent, unless ``force``. Returns why not, or None."""
        record = self.registry.get(agent_id)
        if record is None:
            return f"agent {agent_id} is not registered"
        if record.reachable and not force:
            return f"agent {agent_id} is reachable; stop it first or force the removal"
        self.scheduler.agent_removed(agent_id)
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
            self.view_changed()
        return newly

    async def ping_agents(self) -> None:
        records = self.registry.all()

        async def one(record) -> None:
            reg = record.registration
            if await self.agent_client.ping(AgentAddress(reg.agent_id, reg.ip, reg.port)):
                self._agent_seen(reg.agent_id)

        await asyncio.gather(*(one(r) for r in records))

    async def watch_agents(self, interval: float | None = None) -> None:
        # After a restart, ask every known agent what it runs (tasks may have ended meanwhile).
        await asyncio.gather(*(self.scheduler.reconcile(r.registration.agent_id) for r in self.registry.all()))
        while True:
            try:
                await self.ping_agents()
                self.check_agents()
            except Exception:
                log.exception("agent check failed")
            await asyncio.sleep(interval or self.ping_interval)

    def background(self) -> list[Coroutine[Any, Any, None]]:
        return [self.scheduler.run(), self.watch_agents()]

    # ---- Mesos port ----------------------------------------------------------------------
    async def _register(self, request: Request) -> JSONResponse:
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"message": "malformed JSON"}, status_code=400)
        try:
            registration = AgentRegistration.model_validate(body)
        except ValidationError as exc:
            log.warning("rejected registration from %s: %s", request.client, exc.errors())
            return JSONResponse({"message": "Object is not valid", "details": _details(exc)}, status_code=422)
        try:
            self.register_agent(registration)
        except IpamError as exc:
            log.warning("refused agent %s from %s: %s", registration.agent_id, registration.ip, exc)
            return JSONResponse({"message": str(exc)}, status_code=409)
        log.info("agent %s registered from %s", registration.agent_id, registration.ip)
        return JSONResponse({"agent_id": registration.agent_id})

    async def _heartbeat(self, request: Request) -> JSONResponse:
        agent_id = request.path_params["agent_id"]
        if not self._agent_seen(agent_id):
            # Unknown (e.g. the master lost it): the agent re-registers on 404.
            return JSONResponse({"message": f"agent {agent_id} is not registered"}, status_code=404)
        return JSONResponse({"ok": True})

    async def _status(self, request: Request) -> JSONResponse:
        agent_id = request.path_params["agent_id"]
        if self.registry.get(agent_id) is None:
            return JSONResponse({"message": f"agent {agent_id} is not registered"}, status_code=404)
        try:
            body = await request.json()
        except ValueError:
            self.rejected_statuses += 1
            log.warning("garbage status from %s (%s): not JSON", agent_id, request.client)
            return JSONResponse({"message": "malformed JSON"}, status_code=400)
        try:
            status = TaskStatus.model_validate(body)
        except ValidationError as exc:
            self.rejected_statuses += 1
            log.warning("garbage status from %s (%s): %s", agent_id, request.client, exc.errors())
            return JSONResponse({"message": "Object is not valid", "details": _details(exc)}, status_code=422)
        self._agent_seen(agent_id)
        outcome = await self.scheduler.on_status(agent_id, status)
        return JSONResponse({"task_id": status.task_id, "result": outcome})

    async def _agents(self, _request: Request) -> JSONResponse:
        return JSONResponse({"agents": self.registry.as_json()})

    async def _remove_agent(self, request: Request) -> JSONResponse:
        agent_id = request.path_params["agent_id"]
        why_not = self.remove_agent(agent_id, force=request.query_params.get("force") == "true")
        if why_not is None:
            return JSONResponse({"agent_id": agent_id, "removed": True})
        status = 404 if self.registry.get(agent_id) is None else 409
        return JSONResponse({"message": why_not}, status_code=status)

    async def _view(self, request: Request) -> JSONResponse:
        try:
            since = int(request.query_params.get("since", "0"))
            wait = float(request.query_params.get("wait", "0"))
        except ValueError:
            return JSONResponse({"message": "since: expected an integer version, wait: expected seconds"},
                                status_code=400)
        view = await self.wait_view(since, wait)
        return JSONResponse(view.model_dump())

    async def _state(self, _request: Request) -> JSONResponse:
        return JSONResponse(mesos_state(self))

    async def _metrics(self, _request: Request) -> Response:
        body, content_type = self.metrics.render()
        return Response(body, media_type=content_type)

    def mesos_app(self) -> Starlette:
        app = Starlette(routes=[
            Route("/ping", _pong),
            Route("/v1/agents", self._register, methods=["POST"]),
            Route("/v1/agents", self._agents, methods=["GET"]),
            Route("/v1/agents/{agent_id}", self._remove_agent, methods=["DELETE"]),
            Route("/v1/agents/{agent_id}/heartbeat", self._heartbeat, methods=["POST"]),
            Route("/v1/agents/{agent_id}/status", self._status, methods=["POST"]),
            Route("/v1/view", self._view),
            Route("/master/state", self._state),
            Route("/master/state.json", self._state),
            Route("/state", self._state),
            Route("/state.json", self._state),
            Route("/metrics", self._metrics),
        ])
        app.add_middleware(TokenAuth, secret=self.secret, open_paths=("/ping",))
        app.add_middleware(_LearnAddress, master=self)
        return app

    # ---- Marathon port -------------------------------------------------------------------
    def marathon_app(self) -> Starlette:
        from control.marathon_api import marathon_api

        app = marathon_api(self)
        app.add_middleware(TokenAuth, secret=self.secret, open_paths=("/ping",))
        app.add_middleware(_LearnAddress, master=self)
        return app

    def close(self) -> None:
        self.store.close()


def _totals(registration: AgentRegistration) -> dict[str, float]:
    res = registration.resources
    totals = {"cpus": res.cpus, "mem": res.mem, "disk": res.disk, "gpus": res.gpus}
    return {k: float(v) for k, v in totals.items() if v > 0}


def _task_name(app_id: str) -> str:
    from control.marathon_models import marathon_task_name

    return marathon_task_name(app_id)


def _details(exc: ValidationError) -> list[dict[str, Any]]:
    return [{"path": "/" + "/".join(map(str, e["loc"])), "errors": [e["msg"]]} for e in exc.errors()]


class _LearnAddress:
    """ASGI wrapper: tells the master which local address its clients reach it on."""

    def __init__(self, app: ASGIApp, master: Master) -> None:
        self.app = app
        self.master = master

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.master._learn_address and scope["type"] == "http" and scope.get("server"):
            host = scope["server"][0]
            if host and not host.startswith("127.") and host not in ("::1", "0.0.0.0", "localhost"):
                try:
                    ipaddress.IPv4Address(host)
                except ValueError:
                    pass
                else:
                    self.master.advertise_ip = host
                    self.master._learn_address = False
                    self.master.view_changed()
        await self.app(scope, receive, send)


async def _pong(_request: Request) -> PlainTextResponse:
    return PlainTextResponse("pong")
