"""ZooKeeper addresses as Mesos writes them, and the one kazoo client a process uses.

``zk://host1:2181,host2:2181/mesos`` names the ensemble and the path under which the masters
elect their leader (``json.info_<seq>`` children) and keep their state (``state/``). Masters,
agents and Admin Router's supervisor all take this form (``--zk`` / ``--master zk://…``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from kazoo.client import KazooClient

log = logging.getLogger("navstar.zk")

# Mesos' default is 10 s; a lab on one machine can afford a shorter one (failover waits for it).
DEFAULT_SESSION_TIMEOUT = 10.0


class ZkUrlError(ValueError):
    """A ``zk://`` address that does not parse; the message names what is wrong."""


@dataclass(frozen=True)
class ZkUrl:
    hosts: str          # "198.18.0.2:2181,198.18.0.3:2181"
    path: str           # "/mesos"

    @classmethod
    def parse(cls, url: str) -> ZkUrl:
        if not url.startswith("zk://"):
            raise ZkUrlError(f"{url!r}: expected zk://host:port[,host:port…]/path")
        rest = url[len("zk://"):]
        hosts, slash, path = rest.partition("/")
        if not hosts or not slash or not path.strip("/"):
            raise ZkUrlError(f"{url!r}: expected zk://host:port[,host:port…]/path (hosts and a path)")
        for host in hosts.split(","):
            name, colon, port = host.rpartition(":")
            if not colon or not name or not port.isdigit() or not 0 < int(port) < 65536:
                raise ZkUrlError(f"{url!r}: host {host!r} is not host:port")
        return cls(hosts, "/" + path.strip("/"))

    def __str__(self) -> str:
        return f"zk://{self.hosts}{self.path}"


def is_zk_url(url: str) -> bool:
    return url.startswith("zk://")


def connect(url: ZkUrl, session_timeout: float = DEFAULT_SESSION_TIMEOUT, start_timeout: float = 30.0) -> KazooClient:
    """A started client (connected within ``start_timeout`` or ``kazoo``'s timeout error).
    Retries reconnecting forever; callers watch ``client.state``."""
    client = KazooClient(hosts=url.hosts, timeout=session_timeout,
                         connection_retry={"max_tries": -1, "delay": 0.1, "max_delay": 1.0},
                         command_retry=None)
    client.start(timeout=start_timeout)
    return client
