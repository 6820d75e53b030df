"""Labs for end-to-end tests: built with the real CLI, driven as a user would, always removed.

``lab_factory(agents=3, lb="ebpf", public_agents=1)`` builds a uniquely named lab on its own underlay subnet
(198.18.100-199.0/24, never the default lab's) and tears it down at the end of the module.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from navstar.lab import LabState, process_alive
from tests import hygiene
from tests.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
NAVSTAR = [sys.executable, "-m", "navstar"]


def navstar(*args: str, timeout: float = 120, check: bool = False) -> subprocess.CompletedProcess:
    if args[:2] == ("lab", "up") and "--name" in args:
        hygiene.made_lab(args[args.index("--name") + 1])     # checked for leftovers when the run ends
    return subprocess.run([*NAVSTAR, *args], capture_output=True, text=True, timeout=timeout, check=check)


@dataclass
class LabHandle:
    name: str
    subnet: str
    lb: str

    @property
    def state(self) -> LabState:
        state = LabState.load(self.name)
        assert state is not None, f"lab {self.name} is gone"
        return state

    def ip(self, node: str) -> str:
        return self.state.node(node).ip

    @property
    def agents(self) -> list[str]:
        return [n.name for n in self.state.nodes if n.name != "master"]

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """``navstar <args> --lab <name>`` style commands (app/task/node take ``--lab``)."""
        return navstar(*args, "--lab", self.name, timeout=timeout)

    def exec(self, node: str, *command: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return navstar("lab", "exec", "--name", self.name, node, "--", *command, timeout=timeout)

    def marathon(self) -> httpx.Client:
        state = self.state
        return httpx.Client(base_url=state.master_url, timeout=10,
                            headers={"Authorization": f"token={state.secret()}"})

    def mesos(self) -> httpx.Client:
        state = self.state
        return httpx.Client(base_url=state.mesos_url, timeout=10,
                            headers={"Authorization": f"token={state.secret()}"})

    def add_app(self, app: dict) -> None:
        with self.marathon() as client:
            resp = client.post("/v2/apps", json=app)
            assert resp.status_code in (200, 201), resp.text

    def remove_app(self, app_id: str) -> None:
        with self.marathon() as client:
            client.delete(f"/v2/apps/{app_id.strip('/')}", params={"force": "true"})

    def tasks(self, app_id: str) -> list[dict]:
        with self.marathon() as client:
            return client.get(f"/v2/apps/{app_id.strip('/')}/tasks").json()["tasks"]

    def running(self, app_id: str, count: int, timeout: float = 30, healthy: bool = False) -> list[dict]:
        def ready():
            tasks = [t for t in self.tasks(app_id) if t.get("state") == "TASK_RUNNING"]
            if healthy:
                tasks = [t for t in tasks if t.get("healthCheckResults") and
                         all(r.get("alive") for r in t["healthCheckResults"])]
            return tasks if len(tasks) >= count else None
        return wait_until(ready, timeout, message=f"{count} running tasks of {app_id}")

    def vips(self, node: str) -> list[dict]:
        out = self.exec(node, "curl", "-s", "http://127.0.0.1:62080/v1/vips")
        return json.loads(out.stdout or "[]")

    def listener_pid(self, node: str, port: int) -> int | None:
        """The pid listening on ``port`` in ``node``'s namespace (``ss``, as an operator would)."""
        found = re.search(r"pid=(\d+)", self.exec(node, "ss", "-Hltnp", f"sport = :{port}").stdout)
        return int(found.group(1)) if found else None

    def log(self, node: str) -> str:
        return navstar("lab", "logs", "--name", self.name, node).stdout

    def restore(self) -> None:
        """Whatever an earlier test killed comes back: every node process restarted if it is dead,
        then every agent registered and reachable on the master. A module-shared lab calls this
        before each test, so no test depends on how the one before it ended."""
        for node in self.state.nodes:
            if not process_alive(node.pid):
                restarted = navstar("lab", "restart", "--name", self.name, node.name, timeout=120)
                assert restarted.returncode == 0, restarted.stdout + restarted.stderr

        def agents_reachable() -> bool:
            with self.mesos() as client:
                agents = client.get("/v1/agents").json()["agents"]
            return sorted(a["agent_id"] for a in agents if a["reachable"]) == sorted(self.agents)
        wait_until(agents_reachable, 60, message=f"every agent of {self.name} registered and reachable")


# -- the real dcos CLI 0.6.1 (installed into .venv-dcos by scripts/setup-dcos-cli.sh, idempotent) ----
DCOS = REPO / ".venv-dcos" / "bin" / "dcos"


@pytest.fixture(scope="module")
def dcos_cli() -> Path:
    setup = subprocess.run([str(REPO / "scripts" / "setup-dcos-cli.sh")], capture_output=True, text=True, timeout=600)
    assert setup.returncode == 0, setup.stdout + setup.stderr
    return DCOS


def dcos_runner(cli: Path, home: Path) -> Callable[..., subprocess.CompletedProcess]:
    """``run(*args, check=True, timeout=60)``: ``dcos <args>`` with ``home`` as its configuration
    directory; ``check`` asserts it exited 0."""
    env = {**os.environ, "DCOS_DIR": str(home / "dcos"), "HOME": str(home)}
    env.pop("DCOS_URL", None)

    def run(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        done = subprocess.run([str(cli), *args], capture_output=True, text=True, env=env, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        if check:
            assert done.returncode == 0, f"dcos {' '.join(args)}: {done.stdout}\n{done.stderr}"
        return done
    return run


@pytest.fixture
def dcos(dcos_cli: Path, lab: LabHandle, tmp_path: Path) -> Iterator:
    """``dcos <args>`` with its own configuration directory (the module's ``lab`` must be up)."""
    yield dcos_runner(dcos_cli, tmp_path)


def pid_running(pid: int) -> bool:
    """True while ``pid`` is a live process (not a zombie)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def _free_subnet() -> str:
    used = set()
    for state_file in Path("/var/lib/navstar/labs").glob("*/state.json"):
        try:
            used.add(json.loads(state_file.read_text())["underlay"])
        except (OSError, ValueError, KeyError):
            pass
    choices = [f"198.18.{x}.0/24" for x in range(100, 200)]
    random.shuffle(choices)
    return next(c for c in choices if c not in used)


@pytest.fixture(scope="module")
def lab_factory() -> Iterator[Callable[..., LabHandle]]:
    made: list[LabHandle] = []

    def make(agents: int = 3, lb: str = "auto", overlay_interval: float | None = None,
             public_agents: int = 0) -> LabHandle:
        handle = LabHandle(f"e{uuid.uuid4().hex[:6]}", _free_subnet(), lb)
        made.append(handle)
        extra = ["--overlay-interval", f"{overlay_interval:g}"] if overlay_interval else []
        extra += ["--public-agents", str(public_agents)] if public_agents else []
        up = navstar("lab", "up", "--name", handle.name, "--agents", str(agents), "--underlay", handle.subnet,
                     "--lb", lb, *extra, timeout=180)
        assert up.returncode == 0, up.stdout + up.stderr
        return handle

    yield make
    for handle in made:
        navstar("lab", "down", "--name", handle.name)
