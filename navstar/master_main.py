"""Composition root of ``navstar master``."""

from __future__ import annotations

import asyncio
import logging

from adminrouter.backend import DEFAULT_LISTEN as ADMINROUTER_LISTEN
from adminrouter.backend import backend_app
from adminrouter.tokens import DEFAULT_EXPIRY
from cluster.view import OverlayConfig
from control.agent.images import ImageMap
from control.auth import read_secret
from control.http import master_apps
from control.master import Master
from navstar import logs
from navstar.servers import Listen, serve

log = logging.getLogger("navstar.master")


def run_master(marathon_listen: str, mesos_listen: str, state_dir: str | None,
               token_file: str | None, agent_timeout: float, image_map: str | None = None,
               overlay: OverlayConfig | None = None, adminrouter_listen: str = ADMINROUTER_LISTEN,
               token_expiry: float = DEFAULT_EXPIRY) -> None:
    logs.configure()
    marathon, mesos = Listen.parse(marathon_listen), Listen.parse(mesos_listen)
    backend = Listen.parse(adminrouter_listen, default_host="127.0.0.1")
    advertise = mesos.host if mesos.host not in ("0.0.0.0", "") else None
    master = Master(secret=read_secret(token_file), agent_timeout=agent_timeout, state_dir=state_dir,
                    advertise_ip=advertise, mesos_port=mesos.port, marathon_port=marathon.port,
                    image_map=ImageMap.load(image_map), overlay=overlay)
    log.info("master: Marathon API on %s:%d, Mesos API on %s:%d, Admin Router's backend on %s:%d",
             marathon.host, marathon.port, mesos.host, mesos.port, backend.host, backend.port)
    apps = master_apps(master)
    asyncio.run(serve([(apps.marathon, marathon), (apps.mesos, mesos),
                       (backend_app(master, token_expiry), backend)],
                      background=master.background()))
    master.close()
