"""Several masters in the lab (``navstar lab up --masters 3|5``): ZooKeeper and the masters' flags.

```
master-k (198.18.0.(1+k)) namespace:
    java QuorumPeerMain <lab>/zookeeper/master-k/zoo.cfg   (client :2181, quorum :2888, election :3888)
    navstar master --zk zk://198.18.0.2:2181,…/mesos --ip 198.18.0.(1+k)   (Marathon :8080, Mesos :5050,
                   Admin Router's backend <ip>:8101 — Admin Router on any master sends to the leader's)
    navstar adminrouter --listen <ip>:80 --master zk://…/mesos
agents: navstar agent --master zk://…/mesos        (they find the leader in ZooKeeper)
```

``--masters 1`` (the default) is the embedded master: SQLite in the lab's state, no ZooKeeper.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from navstar import zookeeper

MASTER_COUNTS = (1, 3, 5)
# A lab on one machine: a leader silent this long is replaced (failover waits for it).
ZK_SESSION_TIMEOUT = 3.0
BACKEND_PORT = 8101


class _Node(Protocol):
    name: str
    namespace: str
    ip: str


def master_names(masters: int) -> list[str]:
    return ["master"] if masters == 1 else [f"master-{k}" for k in range(1, masters + 1)]


def is_master_name(name: str) -> bool:
    return name == "master" or (name.startswith("master-") and name[len("master-"):].isdigit())


def zk_url(masters: Sequence[_Node]) -> str:
    return zookeeper.zk_url([m.ip for m in masters], "/mesos")


def master_args(masters: Sequence[_Node], node: _Node, secret_file: str) -> list[str]:
    return ["master", "--marathon-listen", ":8080", "--mesos-listen", ":5050", "--token-file", secret_file,
            "--agent-timeout", "5", "--zk", zk_url(masters), "--ip", node.ip,
            "--zk-session-timeout", f"{ZK_SESSION_TIMEOUT:g}", "--adminrouter-listen", f"{node.ip}:{BACKEND_PORT}"]


def adminrouter_args(masters: Sequence[_Node], node: _Node, secret_file: Path, run_dir: Path) -> list[str]:
    return ["adminrouter", "--listen", f"{node.ip}:80", "--master", zk_url(masters),
            "--token-file", str(secret_file), "--run-dir", str(run_dir)]


def zookeeper_argv(masters: Sequence[_Node], node: _Node, home: Path) -> list[str]:
    server_id = [m.name for m in masters].index(node.name) + 1
    config = zookeeper.write_config(home, server_id, [m.ip for m in masters])
    return zookeeper.server_argv(config)


def modes(masters: Sequence[_Node]) -> dict[str, str | None]:
    """Each master's ZooKeeper server mode (``leader``/``follower``; None: not serving)."""
    found: dict[str, str | None] = {}
    for node in masters:
        out = subprocess.run(["nsenter", f"--net=/run/netns/{node.namespace}", "--", sys.executable, "-c",
                              f"from navstar.zookeeper import mode; print(mode({node.ip!r}))"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
        found[node.name] = None if out in ("", "None") else out
    return found


def wait_quorum(masters: Sequence[_Node], timeout: float) -> None:
    """Raises ``TimeoutError`` naming each server's mode when no quorum forms in time."""
    deadline = time.monotonic() + timeout
    last: dict[str, str | None] = {}
    while time.monotonic() < deadline:
        last = modes(masters)
        if "leader" in last.values():
            return
        time.sleep(0.3)
    raise TimeoutError(f"no ZooKeeper quorum within {timeout:.0f}s: {last}")


ELECTION_SCRIPT = """
import json, sys
from control.leadership import PREFIX, MasterAddress
from control.zk import ZkUrl, connect
url = ZkUrl.parse(sys.argv[1])
client = connect(url, session_timeout=4.0, start_timeout=10.0)
names = sorted((n for n in client.get_children(url.path) if n.startswith(PREFIX)), key=lambda n: int(n[len(PREFIX):]))
print(json.dumps([MasterAddress.parse(client.get(url.path + "/" + n)[0]).ip for n in names]))
client.stop()
"""


def election(masters: Sequence[_Node]) -> list[str]:
    """The masters in the election, leader first (their addresses), read from master-1's
    namespace; [] when ZooKeeper does not answer."""
    out = subprocess.run(["nsenter", f"--net=/run/netns/{masters[0].namespace}", "--", sys.executable, "-c",
                          ELECTION_SCRIPT, zk_url(masters)], capture_output=True, text=True, timeout=30)
    try:
        return list(json.loads(out.stdout))
    except ValueError:
        return []
