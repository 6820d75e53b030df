"""Composition root of ``navstar master``."""

from __future__ import annotations

import asyncio
import logging

from control.auth import read_secret
from control.master import Master
from navstar import logs
from navstar.servers import Listen, serve

log = logging.getLogger("navstar.master")


def run_master(marathon_listen: str, mesos_listen: str, state_dir: str | None,
               token_file: str | None, agent_timeout: float) -> None:
    logs.configure()
    master = Master(secret=read_secret(token_file), agent_timeout=agent_timeout)
    marathon, mesos = Listen.parse(marathon_listen), Listen.parse(mesos_listen)
    log.info("master: Marathon API on %s:%d, Mesos API on %s:%d",
             marathon.host, marathon.port, mesos.host, mesos.port)
    asyncio.run(serve([(master.marathon_app(), marathon), (master.mesos_app(), mesos)],
                      background=[master.watch_agents()]))
