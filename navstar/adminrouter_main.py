"""Composition root of ``navstar adminrouter``: the nginx supervisor and its metrics."""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from adminrouter.config import Settings
from adminrouter.supervisor import Supervisor
from control.auth import auth_header, read_secret
from control.leadership import ZkLeaderFollower
from control.zk import ZkUrl, is_zk_url
from navstar import logs
from navstar.servers import Listen, serve

log = logging.getLogger("navstar.adminrouter")


def run_adminrouter(listen: str, master: str, token_file: str | None, run_dir: str, backend: str,
                    marathon: str, mesos: str, metrics_listen: str, nginx: str = "nginx") -> None:
    logs.configure()
    secret = read_secret(token_file)
    settings = Settings(listen=listen, run_dir=run_dir, backend=backend, marathon=marathon, mesos=mesos,
                        secret=secret or "")
    supervisor = Supervisor(settings, "http://127.0.0.1:5050" if is_zk_url(master) else master, nginx=nginx)
    # Several masters: --master zk://…/mesos, and the upstreams follow the elected leader.
    follower = ZkLeaderFollower(ZkUrl.parse(master), supervisor.leader_changed) if is_zk_url(master) else None

    async def metrics(_request: Request) -> Response:
        return Response(generate_latest(supervisor.registry), media_type=CONTENT_TYPE_LATEST)

    app = Starlette(routes=[Route("/metrics", metrics)])
    asyncio.run(serve([(app, Listen.parse(metrics_listen, default_host="127.0.0.1"))],
                      background=[supervisor.run(auth_header(secret)), *([follower.run()] if follower else [])]))
