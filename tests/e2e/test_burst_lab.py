"""Issue 21 acceptance in a real lab: a burst of 300 one-task apps (each with a VIP) posted at once
converges — every task TASK_RUNNING, tasks on every agent, no task killed as unknown, no
duplicate launch (each app had exactly one task id reach TASK_RUNNING), no launch failure in the
master's log — and does so too when an agent is restarted halfway through.

What a user checks: Marathon's event stream (``/v2/events``: the task ids that reached
TASK_RUNNING per app), ``/v2/tasks``, and the master's log. No stopwatch: timing goals live in
``bench.control_burst``.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.e2e.conftest import LabHandle, navstar, wait_until

APPS = 300
LAUNCH_FAILURE = ("launch of", "rejected")
UNKNOWN_KILLED = ("runs unknown task", "belongs to no app or task the master knows")


@pytest.fixture(scope="module")
def shared_lab(lab_factory) -> LabHandle:
    return lab_factory(agents=3)


@pytest.fixture
def lab(shared_lab: LabHandle) -> LabHandle:
    shared_lab.restore()
    return shared_lab


def burst_app(prefix: str, index: int) -> dict:
    name = f"{prefix}-{index:03d}"
    return {"id": f"/{name}", "cmd": "sleep 100000", "cpus": 0.01, "mem": 8, "instances": 1,
            "portDefinitions": [{"port": 0, "protocol": "tcp", "labels": {"VIP_0": f"/{name}:80"}}]}


class RunningEvents:
    """Follows ``/v2/events``: for each app, the task ids that reached TASK_RUNNING."""

    def __init__(self, lab: LabHandle) -> None:
        self.running: dict[str, set[str]] = defaultdict(set)
        self.attached = threading.Event()
        self._stop = threading.Event()
        self._client = lab.marathon()
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()
        assert self.attached.wait(30), "the event stream did not attach"

    def _follow(self) -> None:
        with self._client.stream("GET", "/v2/events", params={"event_type": "status_update_event"},
                                 timeout=httpx.Timeout(10, read=None)) as resp:
            self.attached.set()
            for line in resp.iter_lines():
                if self._stop.is_set():
                    return
                if line.startswith("data: "):
                    event = json.loads(line[len("data: "):])
                    if event.get("taskStatus") == "TASK_RUNNING":
                        self.running[event["appId"]].add(event["taskId"])

    def close(self) -> None:
        self._stop.set()
        self._client.close()


def post_all(lab: LabHandle, apps: list[dict]) -> None:
    with lab.marathon() as client, ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(lambda app: client.post("/v2/apps", json=app, timeout=120).status_code, apps))
    assert all(code in (200, 201) for code in codes), codes


def burst_tasks(lab: LabHandle, prefix: str) -> list[dict]:
    with lab.marathon() as client:
        return [t for t in client.get("/v2/tasks", timeout=60).json()["tasks"]
                if t["appId"].startswith(f"/{prefix}-")]


def running_count(lab: LabHandle, prefix: str) -> int:
    return sum(1 for t in burst_tasks(lab, prefix) if t.get("state") == "TASK_RUNNING")


@pytest.fixture
def burst(lab: LabHandle) -> Iterator[tuple[str, RunningEvents, int]]:
    """A prefix for the test's apps, the event follower, and where the master's log stood; the
    apps are removed afterwards (and the master forgets them)."""
    prefix = f"b{uuid.uuid4().hex[:5]}"
    log_start = len(lab.log("master"))
    events = RunningEvents(lab)
    try:
        yield prefix, events, log_start
    finally:
        events.close()
        with lab.marathon() as client:
            for index in range(APPS):
                client.delete(f"/v2/apps/{prefix}-{index:03d}", params={"force": "true"})
        wait_until(lambda: not burst_tasks(lab, prefix), timeout=120, message="the burst's tasks gone")


def check_converged(lab: LabHandle, prefix: str, events: RunningEvents, log_start: int) -> None:
    apps = {f"/{prefix}-{index:03d}" for index in range(APPS)}
    wait_until(lambda: running_count(lab, prefix) == APPS, timeout=300, interval=1.0,
               message=f"{APPS} burst tasks TASK_RUNNING")
    tasks = burst_tasks(lab, prefix)
    assert len(tasks) == APPS and {t["appId"] for t in tasks} == apps
    # Tasks on every agent: the burst spread.
    assert {t["host"] for t in tasks} == set(lab.agents)
    # Every running task was seen reaching TASK_RUNNING, and no app had a second task id do so.
    wait_until(lambda: all(t["id"] in events.running[t["appId"]] for t in tasks), timeout=60,
               message="TASK_RUNNING events of every task")
    duplicates = {app: ids for app, ids in events.running.items() if app in apps and len(ids) > 1}
    assert duplicates == {}
    master_log = lab.log("master")[log_start:]
    unknown = [line for line in master_log.splitlines() if any(s in line for s in UNKNOWN_KILLED)]
    assert unknown == []
    failed = [line for line in master_log.splitlines() if all(s in line for s in LAUNCH_FAILURE)]
    assert failed == []


def test_burst_of_300_apps_converges_without_kills_or_duplicates(lab, burst):
    prefix, events, log_start = burst
    post_all(lab, [burst_app(prefix, index) for index in range(APPS)])
    check_converged(lab, prefix, events, log_start)


def test_burst_converges_without_duplicates_when_an_agent_restarts_halfway(lab, burst):
    prefix, events, log_start = burst
    posting = threading.Thread(target=post_all, args=(lab, [burst_app(prefix, index) for index in range(APPS)]))
    posting.start()
    wait_until(lambda: running_count(lab, prefix) >= APPS // 2, timeout=300, interval=0.5,
               message="half the burst running")
    restarted = navstar("lab", "restart", "--name", lab.name, "agent-2", timeout=120)
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    posting.join(300)
    check_converged(lab, prefix, events, log_start)
