"""Composition root of ``navstar master``."""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from adminrouter.backend import DEFAULT_LISTEN as ADMINROUTER_LISTEN
from adminrouter.backend import backend_app
from adminrouter.tokens import DEFAULT_EXPIRY
from cluster.view import OverlayConfig
from control.agent.images import ImageMap
from control.auth import read_secret
from control.http import master_apps
from control.master import Master
from control.state import StoreUnavailable
from control.store import SqliteStore
from navstar import logs
from navstar.servers import Listen, serve

log = logging.getLogger("navstar.master")


def restart(why: str) -> None:
    """Starts this process again (same arguments, same pid): the master reloads its state."""
    log.error("restarting the master: %s", why)
    for handler in logging.getLogger().handlers:
        handler.flush()
    os.execv(sys.executable, sys.orig_argv)


def run_master(marathon_listen: str, mesos_listen: str, state_dir: str | None,
               token_file: str | None, agent_timeout: float, image_map: str | None = None,
               overlay: OverlayConfig | None = None, adminrouter_listen: str = ADMINROUTER_LISTEN,
               token_expiry: float = DEFAULT_EXPIRY, zk: str | None = None, ip: str | None = None,
               zk_session_timeout: float = 10.0) -> None:
    logs.configure()
    marathon, mesos = Listen.parse(marathon_listen), Listen.parse(mesos_listen)
    backend = Listen.parse(adminrouter_listen, default_host="127.0.0.1")
    if zk is not None:
        # Several masters: elected in ZooKeeper, state there (navstar/master_zk.py).
        from control.zk import ZkUrl
        from navstar.master_zk import ZkMaster

        if ip is None:
            raise SystemExit("--zk needs --ip: the address this master advertises in its MasterInfo")
        ZkMaster(ZkUrl.parse(zk), ip, marathon, mesos, backend, token_file, agent_timeout, image_map, overlay,
                 token_expiry, zk_session_timeout).run()
        return
    advertise = mesos.host if mesos.host not in ("0.0.0.0", "") else None
    # A commit the disk refused after the change was applied in memory: once the disk takes
    # writes again, this process starts again and loads what the file holds (control/store.py).
    try:
        store = SqliteStore(state_dir, on_lost=restart)
        master = Master(secret=read_secret(token_file), agent_timeout=agent_timeout, store=store,
                        advertise_ip=advertise, mesos_port=mesos.port, marathon_port=marathon.port,
                        image_map=ImageMap.load(image_map), overlay=overlay)
    except StoreUnavailable as exc:     # a start-up write (master id, view version) refused too
        raise SystemExit(f"navstar master: the state store refuses writes: {exc}") from None
    log.info("master: Marathon API on %s:%d, Mesos API on %s:%d, Admin Router's backend on %s:%d",
             marathon.host, marathon.port, mesos.host, mesos.port, backend.host, backend.port)
    apps = master_apps(master)
    asyncio.run(serve([(apps.marathon, marathon), (apps.mesos, mesos),
                       (backend_app(master, token_expiry), backend)],
                      background=master.background()))
    master.close()
