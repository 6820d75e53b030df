"""What the VIP and DNS lab tests send and how they read the answers: real curl, dig and python3
clients run inside lab namespaces with ``LabHandle.exec`` (so they sit in the node's cgroup, the
eBPF socket LB's scope), apps posted to the lab's Marathon API.
"""

from __future__ import annotations

import datetime
import json
import re
import subprocess
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.e2e.conftest import LabHandle, wait_until

# Marathon task ids are "<app>.<uuid>"; both test servers (below, and the image map's nginx page)
# put the task id in the body.
TASK_ID = re.compile(r"[a-z0-9][a-z0-9-]*\.[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

# A small HTTP server answering its task id; it writes its pid to the sandbox so a test can kill
# exactly this process. HTTP/1.1 keep-alive lets a client hold one connection across requests.
WEB_SERVER = r"""import http.server as h, os
open("server.pid", "w").write(str(os.getpid()))
T = os.environ["MESOS_TASK_ID"].encode()
class H(h.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(s):
        s.send_response(200); s.send_header("Content-Length", str(len(T))); s.end_headers(); s.wfile.write(T)
    def log_message(s, *a):
        pass
h.ThreadingHTTPServer(("", int(os.environ.get("PORT0") or os.environ["LISTEN_PORT"])), H).serve_forever()
"""

# One connection held open: a request per line on stdin, "<status> <body>" per line on stdout.
KEEPALIVE_CLIENT = r"""import http.client, sys
c = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=5)
for _ in sys.stdin:
    try:
        c.request("GET", "/"); r = c.getresponse(); print(r.status, r.read().decode(), flush=True)
    except OSError as e:
        print("error", repr(e), flush=True)
"""

REPO = Path(__file__).resolve().parents[2]


def web_app(app_id: str = "/web", instances: int = 3, vip: str = "/web:80", **extra) -> dict:
    """Host-network python3 servers, one per agent, the VIP on their port (backend agent-ip:hostPort)."""
    return {"id": app_id, "instances": instances, "cpus": 0.05, "mem": 32,
            "cmd": f"exec python3 -c '{WEB_SERVER}'",
            "portDefinitions": [{"port": 0, "protocol": "tcp", "name": "web", "labels": {"VIP_0": vip}}],
            "constraints": [["hostname", "UNIQUE"]], **extra}


def client_app(app_id: str = "/client") -> dict:
    """A task on the `dcos` container network that only holds its namespace for clients to enter."""
    return {"id": app_id, "instances": 1, "cpus": 0.05, "mem": 16, "cmd": "exec sleep 3600",
            "container": {"type": "MESOS"}, "ipAddress": {"networkName": "dcos"}}


@contextmanager
def deployed(lab: LabHandle, *apps: dict) -> Iterator[None]:
    """Posts the apps; removes them at the end and waits until their tasks are gone."""
    ids = [app["id"] for app in apps]
    try:
        for app in apps:
            lab.add_app(app)
        yield
    finally:
        for app_id in ids:
            lab.remove_app(app_id)
        for app_id in ids:
            wait_until(lambda a=app_id: not app_tasks(lab, a), 30, message=f"tasks of {app_id} gone")


def app_tasks(lab: LabHandle, app_id: str) -> list[dict]:
    with lab.marathon() as client:
        tasks = client.get("/v2/tasks").json()["tasks"]
    return [t for t in tasks if t["appId"] == "/" + app_id.strip("/")]


def vip_detail(lab: LabHandle, node: str, name: str) -> dict | None:
    """The agent's ``/v1/vips?detail=true`` entry for the VIP ``name`` (address, states, counts)."""
    out = lab.exec(node, "curl", "-s", "http://127.0.0.1:62080/v1/vips?detail=true").stdout
    return next((v for v in json.loads(out or "[]") if v["name"] == name), None)


def wait_vip_serves(lab: LabHandle, name: str, tasks: list[dict], timeout: float = 20,
                    bridge_container_port: int | None = None) -> str:
    """Waits until every agent has the VIP programmed with exactly these host-port tasks as its
    up backends (agent ip, host port) — except that a bridge-mode task on the agent itself is
    reached at its container address (``bridge_container_port``); returns the VIP address (the same on every agent)."""
    want = {(lab.ip(t["slaveId"]), t["ports"][0]) for t in tasks}

    def seen_from(node: str) -> set[tuple[str, int]]:
        wanted = set()
        for task in tasks:
            if bridge_container_port and task["slaveId"] == node and task.get("ipAddresses"):
                wanted.add((task["ipAddresses"][0]["ipAddress"], bridge_container_port))
            else:
                wanted.add((lab.ip(task["slaveId"]), task["ports"][0]))
        return wanted

    def ready():
        addresses = set()
        for node in lab.agents:
            vip = vip_detail(lab, node, name)
            if vip is None or not vip["programmed"]:
                return None
            if {(b["ip"], b["port"]) for b in vip["backend"] if b["state"] == "up"} != seen_from(node):
                return None
            addresses.add(vip["address"])
        return addresses.pop() if len(addresses) == 1 else None

    return wait_until(ready, timeout, message=f"{name} programmed on every agent with backends {sorted(want)}")


def task_netns(lab: LabHandle, task: dict) -> str:
    """The task's network namespace: the agent names it ``<node namespace>-t<task id>`` (shortened
    from the front, dots as dashes), so it ends with the task's uuid."""
    node_ns = lab.state.node(task["slaveId"]).namespace
    uuid = task["id"].rsplit(".", 1)[1]
    names = [line.split()[0] for line in _netns_list()]
    found = [n for n in names if n.startswith(f"{node_ns}-t") and n.endswith(uuid)]
    assert len(found) == 1, f"task {task['id']} namespace: {found or 'none'} in {names}"
    return found[0]


def _netns_list() -> list[str]:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.splitlines()


def sandbox(lab: LabHandle, task: dict) -> Path:
    return lab.state.directory / task["slaveId"] / "sandboxes" / task["id"]


@dataclass
class Batch:
    """The outcome of ``count`` sequential requests, each on a new connection."""

    where: str
    url: str
    answers: Counter = field(default_factory=Counter)      # task id → requests it answered
    failures: list[str] = field(default_factory=list)      # "<http code> curl exit <n>"
    seconds: list[float] = field(default_factory=list)     # time_total per request

    @property
    def total(self) -> int:
        return sum(self.answers.values()) + len(self.failures)

    def describe(self) -> str:
        return (f"{self.url} from {self.where}: {dict(self.answers)}, "
                f"{len(self.failures)} failed {self.failures[:5]}")


def curl_batch(lab: LabHandle, node: str, host: str, count: int, *, port: int = 80, netns: str | None = None,
               connect_timeout: float = 2) -> Batch:
    """``count`` GETs to ``http://host:port/`` from ``node`` (or the task namespace ``netns`` entered
    from it) with one curl: URL globbing, ``Connection: close`` so each request is a new connection."""
    url = f"http://{host}:{port}/?n=[1-{count}]"
    argv = ["curl", "-s", "--connect-timeout", str(connect_timeout), "-m", "5", "-H", "Connection: close",
            "-w", "\n@@ %{http_code} %{exitcode} %{time_total}\n", url]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    out = lab.exec(node, *argv, timeout=60 + count * 5).stdout
    batch = Batch(f"{node}" + (f" (task namespace {netns})" if netns else ""), f"http://{host}:{port}/")
    body = ""
    for line in out.splitlines():
        if not line.startswith("@@ "):
            body += line
            continue
        code, exit_code, seconds = line[3:].split()
        batch.seconds.append(float(seconds))
        task = TASK_ID.search(body)
        if code == "200" and exit_code == "0" and task:
            batch.answers[task.group(0)] += 1
        else:
            batch.failures.append(f"{code} curl exit {exit_code}")
        body = ""
    assert batch.total == count, f"{batch.describe()}: {batch.total} of {count} requests reported\n{out[-500:]}"
    return batch


def assert_balanced(lab: LabHandle, node: str, host: str, backends: set[str], *, count: int = 90,
                    minimum: int = 20, netns: str | None = None) -> Batch:
    """``count`` requests all succeed, only ``backends`` answer, each at least ``minimum`` times.

    Both dataplanes pick a backend at random per connection (eBPF: a random Maglev slot; NFQUEUE:
    Maglev over the 5-tuple with a fresh source port), so even a perfectly fair three-way split of
    90 leaves some backend under 20 about 2% of the time, and a lab run makes a dozen such checks.
    Two fresh batches are allowed when the only shortfall is that count (a fair split then fails
    a check about once in 80,000); a skewed balancer (or a missing backend) fails all three.
    """
    attempts = 3
    for attempt in range(1, attempts + 1):
        batch = curl_batch(lab, node, host, count, netns=netns)
        assert not batch.failures, batch.describe()
        assert set(batch.answers) == backends, f"{batch.describe()}; expected answers from {sorted(backends)}"
        if min(batch.answers.values()) >= minimum:
            return batch
        if attempt == attempts:
            raise AssertionError(f"{attempts} times a backend answered fewer than {minimum} of {count}: "
                                 f"{batch.describe()}")
    raise AssertionError("unreachable")


def dig(lab: LabHandle, node: str, name: str, rtype: str = "A", server: str = "198.51.100.1") -> list[str]:
    out = lab.exec(node, "dig", "+short", "+time=2", "+tries=1", f"@{server}", name, rtype)
    assert out.returncode == 0, out.stdout + out.stderr
    return [line for line in out.stdout.splitlines() if line]


def seconds_since_epoch(iso: str) -> float:
    """Marathon's ``2026-11-26T14:40:41.417Z`` as unix time."""
    return datetime.datetime.strptime(iso, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.UTC).timestamp()
