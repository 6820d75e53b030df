"""``navstar marathon-lb``: the process that wires Marathon, the plan, the applier and HAProxy.

::

    Follower (SSE + coalesced re-reads) ──apps──► HostResolver ──► plan() ──► Applier ──► HAProxy
                                                                                  ▲  (check, reload,
    status app on <run-dir>/status.sock ◄── HAProxy :9090 /_haproxy_getconfig,    │   runtime API,
                                             /_marathon_lb/{status,metrics}       │   restarts)
                                                              supervise() ────────┘

At start the configuration left in the run directory (a previous run's, if HAProxy still accepts
it) is served until Marathon answers, so a restart with Marathon away keeps the last one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import shutil
import signal
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from marathon_lb.applier import Applier, Metrics
from marathon_lb.haproxy import HaproxyError, HaproxyProcess
from marathon_lb.marathon import Auth, Follower, HostResolver, MarathonClient, mesos_url_for
from marathon_lb.plan import Plan, plan
from marathon_lb.render import Settings

log = logging.getLogger("navstar.marathon_lb")


@dataclass
class Options:
    marathon: str
    group: str
    run_dir: Path
    auth: Auth
    mesos: str | None = None
    stats_port: int = 9090
    http_port: int = 80
    bind_address: str = "*"
    haproxy: str = "haproxy"
    min_slots: int = 8
    coalesce: float = 0.2
    resync: float = 60.0
    max_backoff: float = 10.0
    status_listen: tuple[str, int] | None = None     # the status app on TCP too (besides HAProxy's :9090)


def status_app(applier: Applier, follower: Follower | None = None) -> Starlette:
    async def getconfig(_request: Request) -> Response:
        text = applier.text or (applier.config_path.read_text() if applier.config_path.exists() else "")
        return PlainTextResponse(text)

    async def metrics(_request: Request) -> Response:
        return Response(generate_latest(applier.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def status(_request: Request) -> Response:
        current: Plan = applier.plan
        return JSONResponse({
            "backends": [{"name": b.name, "app": b.app_id, "port": b.port, "mode": b.mode, "balance": b.balance,
                          "vhosts": list(b.vhosts), "servers": [f"{s.ip}:{s.port}" for s in b.servers]}
                         for b in current.backends],
            "skipped": [{"app": s.app_id, "reason": s.reason} for s in applier.status.plan.skipped],
            "lastApply": applier.status.how, "appliedAt": applier.status.applied_at,
            "lastError": applier.status.last_error, "lastRefusal": applier.status.last_refusal,
            "haproxyWorkerPid": applier.haproxy.worker_pid(),
            "reads": follower.reads if follower else 0,
        })

    return Starlette(routes=[Route("/_haproxy_getconfig", getconfig), Route("/_marathon_lb/metrics", metrics),
                             Route("/_marathon_lb/status", status)])


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[no-untyped-def]
        yield                    # the process handles signals once, for everything


def task_hosts(apps: list[dict[str, Any]]) -> set[str]:
    return {str(t.get("host") or "") for a in apps for t in a.get("tasks") or []}


async def resume(applier: Applier) -> None:
    """Serves the configuration a previous run left, when HAProxy accepts it; else an empty one."""
    if applier.config_path.exists():
        problem = await applier.haproxy.check(applier.config_path)
        if problem is None:
            try:
                await applier.haproxy.start()
                applier.text = applier.config_path.read_text()
                log.info("serving the previous configuration until Marathon answers")
                return
            except HaproxyError as exc:
                log.warning("previous configuration did not start: %s", exc)
    await applier.apply(Plan())


def fitting_maxconn(wanted: int = 50000) -> int:
    """HAProxy raises its descriptor limit to about 2×maxconn and refuses to start when the hard
    limit is lower: ask for what the limit allows (marathon-lb's 50000 where it can)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        return wanted
    return max(256, min(wanted, (hard - 256) // 2))


SUN_PATH_MAX = 107      # a unix socket's path, in bytes, without the final NUL


def socket_dir_for(run_dir: Path) -> Path | None:
    """None when the sockets fit in ``run_dir`` (a Mesos sandbox path often does not): else a fresh
    private directory under the temporary directory."""
    if len(str(run_dir.resolve() / "master.sock").encode()) <= SUN_PATH_MAX - 8:
        return None
    return Path(tempfile.mkdtemp(prefix="marathon-lb-"))


async def run(opts: Options) -> None:
    opts.run_dir.mkdir(parents=True, exist_ok=True)
    sockets = socket_dir_for(opts.run_dir)
    try:
        await _run(opts, sockets)
    finally:
        if sockets is not None:
            shutil.rmtree(sockets, ignore_errors=True)


async def _run(opts: Options, sockets: Path | None) -> None:
    settings = Settings(opts.run_dir, stats_port=opts.stats_port, http_port=opts.http_port,
                        bind_address=opts.bind_address, min_slots=opts.min_slots, maxconn=fitting_maxconn(),
                        socket_dir=sockets)
    metrics = Metrics()
    haproxy = HaproxyProcess(opts.run_dir / "haproxy.cfg", settings.admin_socket, settings.master_socket, opts.haproxy)
    applier = Applier(haproxy, settings, metrics)
    client = MarathonClient(opts.marathon, opts.auth)
    mesos = MarathonClient(opts.mesos or mesos_url_for(opts.marathon), opts.auth)
    resolver = HostResolver(mesos)

    async def on_apps(apps: list[dict[str, Any]]) -> None:
        await resolver.prepare(task_hosts(apps))
        await applier.apply(plan(apps, opts.group, resolver.resolve, settings.reserved_ports, applier.plan.owners))

    follower = Follower(client, on_apps, metrics, coalesce=opts.coalesce, resync=opts.resync,
                        max_backoff=opts.max_backoff)
    app = status_app(applier, follower)
    settings.status_socket.unlink(missing_ok=True)
    servers = [_Server(uvicorn.Config(app, uds=str(settings.status_socket), log_level="warning", lifespan="off",
                                      access_log=False))]
    if opts.status_listen:
        servers.append(_Server(uvicorn.Config(app, host=opts.status_listen[0], port=opts.status_listen[1],
                                              log_level="warning", lifespan="off", access_log=False)))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    tasks = [asyncio.create_task(s.serve()) for s in servers]
    await resume(applier)
    tasks += [asyncio.create_task(follower.run()), asyncio.create_task(applier.supervise())]
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
    for task in done:
        if task is not stopper and not task.cancelled() and task.exception() is not None:
            log.error("stopping: %r", task.exception())
    for server in servers:
        server.should_exit = True
    await applier.stop()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await client.close()
    await mesos.close()
