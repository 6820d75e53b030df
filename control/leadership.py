"""Leader election in ZooKeeper as Mesos does it, so a tool that finds Mesos' leader finds ours.

Every master creates an ephemeral sequential znode ``<path>/json.info_<10 digits>`` holding its
``MasterInfo`` as JSON (Mesos' ``include/mesos/mesos.proto``: ``id``, ``ip`` — the IPv4 address
as the uint32 Mesos stores, ``in_addr.s_addr`` read on a little-endian host —, ``port``, ``pid``
``master@<ip>:<port>``, ``hostname``, ``version``, ``address`` {``hostname``, ``ip``, ``port``}).
The lowest sequence number leads. A master's znode goes with its session: killed, stopped past
the session timeout or cut off, it stops leading and the next one leads.

```
Contender(client, path, info) ──create json.info_N (ephemeral, sequential)──► ZooKeeper
LeaderDetector / Contender ◄──children watch── the lowest json.info_ → on_change(Leadership)
session LOST / own znode gone ──► on_lost(reason)   (a master that led must stop acting as one)
```

Callbacks run on kazoo's threads; callers hand them to their event loop. ``ZkLeaderFollower``
does that for the ones that only follow (agents with ``--master zk://…``, Admin Router):

```
kazoo (own thread) ── children watch ──► Leadership ──call_soon_threadsafe──► on_change (loop)
```
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kazoo.client import KazooClient
from kazoo.exceptions import KazooException, NoNodeError
from kazoo.protocol.states import KazooState

from control.zk import DEFAULT_SESSION_TIMEOUT, ZkUrl, connect

log = logging.getLogger("navstar.leadership")

PREFIX = "json.info_"
MESOS_VERSION = "1.11.0"


def ip_to_mesos(ip: str) -> int:
    """The uint32 Mesos puts in ``MasterInfo.ip``: the address's network-order bytes as a
    little-endian integer (198.18.0.2 → 33559238)."""
    return int(struct.unpack("<I", socket.inet_aton(ip))[0])


def ip_from_mesos(value: int) -> str:
    return socket.inet_ntoa(struct.pack("<I", value))


def master_info(master_id: str, ip: str, port: int = 5050, hostname: str | None = None) -> dict[str, Any]:
    """MasterInfo as Mesos writes it into ZooKeeper (``JSON::protobuf`` field names)."""
    hostname = hostname or ip
    return {"id": master_id, "ip": ip_to_mesos(ip), "port": port, "pid": f"master@{ip}:{port}",
            "hostname": hostname, "version": MESOS_VERSION,
            "address": {"hostname": hostname, "ip": ip, "port": port}}


@dataclass(frozen=True)
class MasterAddress:
    """A master as its znode names it."""

    id: str
    ip: str
    port: int
    hostname: str

    @classmethod
    def parse(cls, data: bytes) -> MasterAddress:
        """Raises ``ValueError`` for what is not MasterInfo JSON."""
        try:
            raw = json.loads(data)
            address = raw.get("address") or {}
            ip = address.get("ip") or ip_from_mesos(int(raw["ip"]))
            return cls(str(raw["id"]), str(ip), int(address.get("port") or raw.get("port") or 5050),
                       str(raw.get("hostname") or ip))
        except (ValueError, KeyError, TypeError, AttributeError, OSError, struct.error) as exc:
            raise ValueError(f"not MasterInfo JSON: {exc}") from None

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{self.port}"


@dataclass(frozen=True)
class Leadership:
    """What the election says now: the leader (None while there is none) and every master."""

    leader: MasterAddress | None
    masters: tuple[MasterAddress, ...] = field(default=())
    is_self: bool = False


def _sequence(name: str) -> int:
    return int(name[len(PREFIX):]) if name[len(PREFIX):].isdigit() else 1 << 62


class LeaderDetector:
    """Watches the election under ``path``; ``on_change(Leadership)`` on every change (also
    the first). ``leadership`` is the latest."""

    def __init__(self, client: KazooClient, path: str, on_change: Callable[[Leadership], None]) -> None:
        self.client = client
        self.path = path.rstrip("/")
        self.on_change = on_change
        self.own_node: str | None = None
        self.leadership = Leadership(None)
        self._lock = threading.Lock()
        self._stopped = False

    def start(self) -> None:
        self.client.ensure_path(self.path)
        self.client.ChildrenWatch(self.path, self._children)

    def stop(self) -> None:
        self._stopped = True

    def _children(self, children: list[str]) -> bool:
        if self._stopped:
            return False     # removes the watch
        with self._lock:
            masters = []
            for name in sorted((c for c in children if c.startswith(PREFIX)), key=_sequence):
                try:
                    data, _stat = self.client.get(f"{self.path}/{name}")
                    masters.append((name, MasterAddress.parse(data)))
                except NoNodeError:
                    continue            # gone between the listing and the read
                except ValueError as exc:
                    log.warning("%s/%s: %s", self.path, name, exc)
                except KazooException as exc:
                    log.warning("cannot read %s/%s: %s", self.path, name, exc)
            leader = masters[0] if masters else None
            leadership = Leadership(leader[1] if leader else None, tuple(m for _n, m in masters),
                                    is_self=leader is not None and leader[0] == self._own_name())
            changed = leadership != self.leadership
            self.leadership = leadership
        if changed:
            self.on_change(leadership)
        self._after_children(children)
        return True

    def _own_name(self) -> str | None:
        return self.own_node.rsplit("/", 1)[1] if self.own_node else None

    def _after_children(self, children: list[str]) -> None:
        pass


class Contender(LeaderDetector):
    """Offers this master for election (its MasterInfo in an ephemeral sequential znode) and
    watches the result. ``on_lost(reason)`` once the znode is gone for good: the session expired
    (stopped or cut off past the timeout) or the znode was deleted. Never called twice."""

    def __init__(self, client: KazooClient, path: str, info: dict[str, Any],
                 on_change: Callable[[Leadership], None], on_lost: Callable[[str], None]) -> None:
        super().__init__(client, path, on_change)
        self.info = info
        self.on_lost = on_lost
        self._lost = False

    def start(self) -> None:
        self.client.add_listener(self._state)
        self.client.ensure_path(self.path)
        self.own_node = self.client.create(f"{self.path}/{PREFIX}", json.dumps(self.info).encode(),
                                           ephemeral=True, sequence=True)
        log.info("contending as %s", self.own_node)
        super().start()

    def _state(self, state: str) -> None:
        if state == KazooState.LOST:
            self._lose("the ZooKeeper session expired")
        elif state == KazooState.SUSPENDED:
            log.warning("ZooKeeper connection suspended; leading on until the session expires")

    def _after_children(self, children: list[str]) -> None:
        name = self._own_name()
        if name is not None and name not in children and self.client.state == KazooState.CONNECTED:
            self._lose(f"the election znode {self.own_node} is gone")

    def _lose(self, why: str) -> None:
        if not self._lost:
            self._lost = True
            log.error("out of the election: %s", why)
            self.on_lost(why)


class ZkLeaderFollower:
    def __init__(self, url: ZkUrl, on_change: Callable[[Leadership], None],
                 session_timeout: float = DEFAULT_SESSION_TIMEOUT) -> None:
        self.url = url
        self.on_change = on_change
        self.session_timeout = session_timeout
        self.leadership = Leadership(None)

    async def run(self) -> None:
        """Connects (retrying until ZooKeeper answers) and follows the election; never returns."""
        loop = asyncio.get_running_loop()

        def changed(leadership: Leadership) -> None:
            loop.call_soon_threadsafe(self._deliver, leadership)

        while True:
            try:
                client = await asyncio.to_thread(connect, self.url, self.session_timeout, 10.0)
                detector = LeaderDetector(client, self.url.path, changed)
                await asyncio.to_thread(detector.start)
                break
            except Exception as exc:  # noqa: BLE001 — ZooKeeper not up yet: keep trying
                log.info("ZooKeeper %s not reachable yet: %s", self.url, exc)
                await asyncio.sleep(1.0)
        log.info("following the masters' election in %s", self.url)
        try:
            await asyncio.Event().wait()
        finally:
            detector.stop()
            await asyncio.to_thread(client.stop)
            client.close()

    def _deliver(self, leadership: Leadership) -> None:
        if leadership.leader != self.leadership.leader:
            log.info("leading master: %s", leadership.leader.url if leadership.leader else "none elected")
        self.leadership = leadership
        self.on_change(leadership)
