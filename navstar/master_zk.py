"""Composition root of ``navstar master --zk zk://…/mesos`` (several masters).

```
start ──► kazoo session ──► Contender: json.info_N with MasterInfo ──► follower faces serve at once
                                 │ lowest N (elected)
                                 ▼
          ZkStore.claim() (epoch bumped: the previous leader is fenced) ──► Master(store=ZkStore)
          ──► the ports switch to the leader's faces; scheduler and agent watcher start
session expired / znode gone / fenced ──► re-exec this process (it comes back as a follower)
```

Re-executing is Mesos' answer to a lost leadership (the master aborts and its supervisor starts
it again): nothing a deposed leader remembers can act after it, and the pid stays the same.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import uuid

from kazoo.client import KazooClient
from kazoo.protocol.states import KazooState

from adminrouter.backend import backend_app
from cluster.view import OverlayConfig
from control.agent.images import ImageMap
from control.auth import read_secret
from control.http import master_apps
from control.http.follower import (
    LeaderSwitch,
    follower_backend_app,
    follower_marathon_app,
    follower_mesos_app,
)
from control.leadership import Contender, Leadership, master_info
from control.master import Master
from control.state import StoreUnavailable
from control.store_zk import ZkStore
from control.zk import ZkUrl, connect
from navstar.servers import Listen, serve

log = logging.getLogger("navstar.master")


def abdicate(why: str, client: KazooClient | None = None) -> None:
    """This process may not act as leader any more: start it again, as a follower. A session
    that still answers is closed first, so its election znode goes at once (not at its timeout)."""
    log.error("leaving leadership (%s): starting again as a follower", why)
    if client is not None and client.state == KazooState.CONNECTED:
        closing = threading.Thread(target=client.stop, daemon=True)
        closing.start()
        closing.join(2.0)
    for handler in logging.getLogger().handlers:
        handler.flush()
    os.execv(sys.executable, sys.orig_argv)


class ZkMaster:
    def __init__(self, url: ZkUrl, ip: str, marathon: Listen, mesos: Listen, backend: Listen,
                 secret_file: str | None, agent_timeout: float, image_map: str | None,
                 overlay: OverlayConfig | None, token_expiry: float, session_timeout: float) -> None:
        self.url, self.ip = url, ip
        self.marathon_listen, self.mesos_listen, self.backend_listen = marathon, mesos, backend
        self.secret = read_secret(secret_file)
        self.agent_timeout, self.image_map, self.overlay = agent_timeout, image_map, overlay
        self.token_expiry, self.session_timeout = token_expiry, session_timeout
        self.leadership = Leadership(None)
        self.master: Master | None = None
        self._elected = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.marathon = LeaderSwitch(follower_marathon_app(lambda: self.leadership, self.secret))
        self.mesos = LeaderSwitch(follower_mesos_app(lambda: self.leadership))
        self.backend = LeaderSwitch(follower_backend_app())

    def _changed(self, leadership: Leadership) -> None:
        """From kazoo's thread: the election moved."""
        previous, self.leadership = self.leadership, leadership
        if leadership.leader != previous.leader:
            log.info("leader: %s", f"{leadership.leader.ip} ({leadership.leader.id})" if leadership.leader
                     else "none elected")
        if leadership.is_self and not self._elected.is_set():
            self._elected.set()
            if self._loop is not None:
                self._loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._lead()))
        elif self._elected.is_set() and not leadership.is_self and leadership.leader is not None:
            self._abdicate(f"the election names {leadership.leader.ip} now")

    async def _lead(self) -> None:
        store = ZkStore(self.client, self.url.path, on_lost=self._abdicate)
        while True:
            try:
                epoch = await asyncio.to_thread(store.claim)
                break
            except StoreUnavailable as exc:
                log.warning("elected, but the state cannot be loaded yet: %s", exc)
                await asyncio.sleep(0.5)
        master = await asyncio.to_thread(
            Master, secret=self.secret, agent_timeout=self.agent_timeout, advertise_ip=self.ip,
            mesos_port=self.mesos_listen.port, marathon_port=self.marathon_listen.port,
            image_map=ImageMap.load(self.image_map), overlay=self.overlay, store=store)
        self.master = master
        apps = master_apps(master)
        self.backend.lead(backend_app(master, self.token_expiry))
        self.marathon.lead(apps.marathon)
        self.mesos.lead(apps.mesos)
        log.info("leading (epoch %d): %d apps, %d tasks, %d agents loaded", epoch, len(master.scheduler.apps),
                 len(master.scheduler.tasks), len(master.registry.all()))
        await asyncio.gather(*master.background())

    async def _contend(self) -> None:
        self._loop = asyncio.get_running_loop()
        info = master_info(f"navstar-{uuid.uuid4()}", self.ip, self.mesos_listen.port)
        self.contender = Contender(self.client, self.url.path, info, self._changed, abdicate)
        await asyncio.to_thread(self.contender.start)
        await asyncio.Event().wait()

    def _abdicate(self, why: str) -> None:
        # From kazoo's threads or the loop; closing the session from its own event thread
        # would wait on itself, so the close runs on a thread of its own (bounded).
        abdicate(why, self.client)

    def run(self) -> None:
        self.client = connect(self.url, session_timeout=self.session_timeout)
        log.info("master %s: ZooKeeper %s (session timeout %.1fs)", self.ip, self.url, self.session_timeout)
        asyncio.run(serve([(self.marathon, self.marathon_listen), (self.mesos, self.mesos_listen),
                           (self.backend, self.backend_listen)], background=[self._contend()]))
        self.client.stop()
        self.client.close()
