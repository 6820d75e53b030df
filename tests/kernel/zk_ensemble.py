"""A real three-server ZooKeeper ensemble in a test's own network namespace (loopback addresses
127.0.0.11-13), and kazoo clients whose sockets live in that namespace.

The client threads are born in the namespace: ``in_netns`` runs a function on a fresh thread
that first joins the namespace (``setns`` is per thread), and kazoo's connection thread, started
from there, inherits it.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from kazoo.client import KazooClient

from control.zk import ZkUrl, connect
from navstar import zookeeper
from tests.waiting import wait_until

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
IPS = ["127.0.0.11", "127.0.0.12", "127.0.0.13"]


def in_netns(namespace: str, fn: Callable[[], T]) -> T:
    """``fn()`` on a thread inside the namespace; its result or its exception."""
    box: dict[str, object] = {}

    def run() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns")
        finally:
            os.close(fd)
        try:
            box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 — handed to the caller
            box["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["result"]  # type: ignore[return-value]


class Ensemble:
    def __init__(self, ns, home: Path) -> None:
        self.ns = ns
        self.home = home
        self.procs: dict[int, subprocess.Popen] = {}
        self.url = ZkUrl.parse(zookeeper.zk_url(IPS, "/mesos"))

    def start(self, server_id: int) -> None:
        config = zookeeper.write_config(self.home / f"zk{server_id}", server_id, IPS)
        log = open(self.home / f"zk{server_id}.log", "ab")
        self.procs[server_id] = self.ns.popen(*zookeeper.server_argv(config), stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def kill(self, server_id: int) -> None:
        proc = self.procs.pop(server_id)
        proc.kill()
        proc.wait()

    def modes(self) -> list[str | None]:
        return in_netns(self.ns.name, lambda: [zookeeper.mode(ip) for ip in IPS])

    def wait_quorum(self) -> None:
        wait_until(lambda: "leader" in self.modes(), timeout=60, interval=0.2, message="a ZooKeeper quorum")

    def client(self, session_timeout: float = 4.0) -> KazooClient:
        return in_netns(self.ns.name, lambda: connect(self.url, session_timeout=session_timeout))

    def stop(self) -> None:
        for server_id in list(self.procs):
            self.kill(server_id)
