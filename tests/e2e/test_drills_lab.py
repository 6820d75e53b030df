"""Fault drills on a real lab (issue 16, part 5), each asserting that nothing was lost.

An agent cut off the underlay (its port on the underlay bridge set down, as a pulled cable):
after the agent timeout its tasks are replaced on the other agents and the other nodes stop
sending its backends VIP traffic; reconnected, it rejoins, its stale tasks are killed and no task
is left twice.

The master's state directory turned read-only (a read-only bind mount over it): writes are
refused with a JSON 503 naming the reason, directly and through Admin Router, while reads, the
agents, the VIPs and the DNS names keep working; a task dying meanwhile is known to its agent,
not yet to the master. Writable again, writes succeed without a restart, the dead task's status
arrives and it is replaced, and nothing else changed (apps, tasks, ``PRAGMA integrity_check``).
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from navstar.lab import underlay_namespace
from tests.e2e.conftest import LabHandle, pid_running, wait_until
from tests.mounts import read_only

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
VIP = "drill.marathon.l4lb.thisdcos.directory"


@pytest.fixture(scope="module")
def shared_lab(lab_factory) -> LabHandle:
    return lab_factory(agents=3)


@pytest.fixture
def lab(shared_lab: LabHandle) -> Iterator[LabHandle]:
    shared_lab.restore()
    yield shared_lab


def drill_app(instances: int) -> dict:
    """The seed ``/web`` app (answers with its task id) as ``/drill`` on VIP ``/drill:80``."""
    app = json.loads((EXAMPLES / "web-vip.json").read_text())
    # Replaced as soon as its agent is unreachable (Marathon's default waits 300 s).
    app.update(id="/drill", instances=instances,
               unreachableStrategy={"inactiveAfterSeconds": 0, "expungeAfterSeconds": 0})
    app["portDefinitions"][0]["labels"] = {"VIP_0": "/drill:80"}
    return app


def underlay_port(lab: LabHandle, node: str, state: str) -> None:
    """``ip link set p-<node> up|down`` on the underlay bridge: the node's cable in or out."""
    subprocess.run(["ip", "netns", "exec", underlay_namespace(lab.name), "ip", "link", "set",
                    f"p-{node}"[:15], state], check=True, capture_output=True, timeout=10)


def reachable(lab: LabHandle) -> dict[str, bool]:
    with lab.mesos() as client:
        return {a["agent_id"]: a["reachable"] for a in client.get("/v1/agents").json()["agents"]}


def backends(lab: LabHandle, node: str) -> list[str] | None:
    vip = next((v for v in lab.vips(node) if v["vip"] == f"{VIP}:80"), None)
    return None if vip is None else sorted(f"{b['ip']}:{b['port']}" for b in vip["backend"])


def running(lab: LabHandle) -> list[dict]:
    return [t for t in lab.tasks("/drill") if t.get("state") == "TASK_RUNNING"]


def curl_answers(lab: LabHandle, node: str, count: int) -> list[str]:
    """``count`` requests to the VIP by name from ``node``: the task id each was answered by."""
    script = f"for i in $(seq {count}); do curl -s -m 2 http://{VIP}/ || echo FAILED; done"
    return lab.exec(node, "sh", "-c", script, timeout=60).stdout.split()


def test_agent_cut_off_the_underlay_is_replaced_then_rejoins_without_duplicates(lab):
    agents = lab.agents
    lab.add_app(drill_app(len(agents)))
    try:
        before = lab.running("/drill", len(agents), healthy=True)
        placed = {t["slaveId"] for t in before}
        assert len(placed) >= 2, before
        # The cut agent has a task; another agent with one watches (it curls the VIP).
        victim = sorted(placed)[-1]
        observer = next(a for a in agents if a != victim)
        stale = {t["id"]: (t["ports"][0], lab.ip(victim)) for t in before if t["slaveId"] == victim}
        stale_pids = {task_id: wait_until(lambda p=port: lab.listener_pid(victim, p), timeout=20,
                                          message=f"{task_id} listening")
                      for task_id, (port, _) in stale.items()}
        victim_backends = {f"{ip}:{port}" for port, ip in stale.values()}
        wait_until(lambda: (b := backends(lab, observer)) is not None and victim_backends <= set(b),
                   timeout=30, message=f"{observer} sending to {victim}'s backends")

        underlay_port(lab, victim, "down")
        try:
            # After the agent timeout: unreachable, its tasks replaced on the others.
            wait_until(lambda: reachable(lab).get(victim) is False, timeout=60,
                       message=f"{victim} unreachable on the master")
            replaced = wait_until(
                lambda: (r := running(lab)) and len(r) == len(agents) and all(t["slaveId"] != victim for t in r)
                and r, timeout=60, message=f"{len(agents)} /drill tasks running, none on {victim}")
            assert not set(stale) & {t["id"] for t in replaced}
            # The other nodes stop sending to its backends and send to the replacements instead.
            new_backends = {f"{lab.ip(t['slaveId'])}:{t['ports'][0]}" for t in replaced}
            for node in agents:
                if node == victim:
                    continue
                wait_until(lambda n=node: backends(lab, n) == sorted(new_backends), timeout=60,
                           message=f"{node}'s {VIP} backends to be the replacements {sorted(new_backends)}")
            answers = curl_answers(lab, observer, 30)
            assert len(answers) == 30 and "FAILED" not in answers, answers
            assert set(answers) <= {t["id"] for t in replaced}, answers
        finally:
            underlay_port(lab, victim, "up")

        # Reconnected: it rejoins, its stale tasks are killed, nothing is duplicated.
        wait_until(lambda: reachable(lab).get(victim) is True, timeout=60, message=f"{victim} reachable again")
        for task_id, pid in stale_pids.items():
            wait_until(lambda p=pid: not pid_running(p), timeout=60, message=f"stale task {task_id} (pid {pid}) killed")
        tasks = lab.tasks("/drill")
        assert sorted(t["id"] for t in tasks) == sorted(t["id"] for t in replaced), tasks
        assert len({t["id"] for t in tasks}) == len(tasks) == len(agents)
        for node in agents:
            wait_until(lambda n=node: backends(lab, n) == sorted(new_backends), timeout=60,
                       message=f"{node}'s {VIP} backends: the replacements only")
        answers = curl_answers(lab, victim, 30)
        assert len(answers) == 30 and set(answers) <= {t["id"] for t in replaced}, answers
    finally:
        lab.remove_app("/drill")
        with lab.marathon() as client:
            wait_until(lambda: client.get("/v2/apps/drill").status_code == 404, timeout=30,
                       message="/drill removed")


# ---- the master's state directory turning read-only --------------------------------------------

def direct(lab: LabHandle, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    """The master's Marathon port from its own namespace (sealed from the root namespace)."""
    argv = ["curl", "-s", "-m", "10", "-X", method, "-w", "\n%{http_code}",
            "-H", f"Authorization: token={lab.state.secret()}", f"http://127.0.0.1:8080{path}"]
    if body is not None:
        argv += ["-H", "Content-Type: application/json", "-d", json.dumps(body)]
    out = lab.exec("master", *argv, timeout=30).stdout
    text, _, status = out.rpartition("\n")
    return int(status), json.loads(text) if text.strip() else {}


def snapshot(lab: LabHandle, leave_out: str = "") -> tuple[dict[str, str], dict[str, tuple[str, str]]]:
    """Apps (id → version) and tasks (id → agent, state), as Marathon lists them."""
    with lab.marathon() as client:
        apps = {a["id"]: a["version"] for a in client.get("/v2/apps").json()["apps"] if a["id"] != leave_out}
        tasks = {t["id"]: (t["slaveId"], t["state"]) for t in client.get("/v2/tasks").json()["tasks"]
                 if t["appId"] != leave_out}
    return apps, tasks


def agent_tasks(lab: LabHandle, agent: str) -> dict[str, str]:
    """The tasks an agent runs, by id, with their states (``GET :5051/v1/tasks``: live ones)."""
    out = lab.exec(agent, "curl", "-sf", "-H", f"Authorization: token={lab.state.secret()}",
                   f"http://{lab.ip(agent)}:5051/v1/tasks")
    assert out.returncode == 0, out.stderr
    return {s["task_id"]: s["state"] for s in json.loads(out.stdout)}


def store_writable(lab: LabHandle) -> float | None:
    with lab.mesos() as client:
        found = re.search(r"^navstar_master_state_store_writable (\S+)$", client.get("/metrics").text, re.M)
    return float(found.group(1)) if found else None


def integrity(lab: LabHandle) -> list[tuple[str]]:
    database = lab.state.directory / "master" / "master.sqlite"
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        return db.execute("PRAGMA integrity_check").fetchall()


def test_a_read_only_state_directory_refuses_writes_with_503_serves_reads_and_loses_nothing(lab):
    agents = lab.agents
    lab.add_app(drill_app(2))
    late = {**drill_app(1), "id": "/drill-late"}
    late["portDefinitions"] = [{"port": 0, "protocol": "tcp", "name": "http"}]
    try:
        drill_tasks = {t["id"] for t in lab.running("/drill", 2, healthy=True)}
        wait_until(lambda: all(len(backends(lab, n) or []) == 2 for n in agents), timeout=30,
                   message=f"every agent sending {VIP} to both /drill tasks")
        master_pid = lab.state.master.pid
        apps_before, tasks_before = snapshot(lab)
        with read_only(lab.state.directory / "master"):
            status, refused = direct(lab, "POST", "/v2/apps", late)
            assert status == 503, refused
            assert "is read-only" in refused["reason"] and refused["message"].startswith(
                "the master cannot change its state now"), refused
            with lab.marathon() as client:          # through Admin Router: the master's answer as is
                through = client.post("/v2/apps", json=late)
                assert through.status_code == 503 and through.json()["reason"] == refused["reason"], through.text
                assert client.put("/v2/apps/drill", json={"instances": 3}).status_code == 503
                assert client.delete("/v2/apps/drill").status_code == 503
                assert client.get("/v2/apps/drill-late").status_code == 404
            # Reads, the agents, the VIP and its name keep working.
            assert snapshot(lab) == (apps_before, tasks_before)
            with lab.mesos() as client:
                state = client.get("/master/state").json()
            assert sorted(a["id"] for a in state["slaves"]) == sorted(agents)
            assert all(reachable(lab).values())
            wait_until(lambda: store_writable(lab) == 0, timeout=10, message="the store's gauge at 0")
            for node in agents:
                answers = curl_answers(lab, node, 10)
                assert len(answers) == 10 and set(answers) <= drill_tasks, answers
                dug = lab.exec(node, "dig", "+short", VIP, "@198.51.100.1").stdout.split()
                assert len(dug) == 1 and dug[0].startswith("11."), dug
            # A task dies meanwhile: its agent knows at once, the master (its status refused) not yet.
            victim = sorted(lab.tasks("/drill"), key=lambda t: t["id"])[0]
            assert victim["id"] in agent_tasks(lab, victim["slaveId"])
            pid = lab.listener_pid(victim["slaveId"], victim["ports"][0])
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda: not pid_running(pid) and victim["id"] not in agent_tasks(lab, victim["slaveId"]),
                       timeout=20, message=f"{victim['slaveId']} seeing {victim['id']} end")
            assert snapshot(lab)[1][victim["id"]] == tasks_before[victim["id"]]
        # Writable again, no restart: the write is taken, the app runs, the dead task's status
        # arrives and it is replaced, nothing else changed.
        assert lab.state.master.pid == master_pid and pid_running(master_pid)
        with lab.marathon() as client:
            created = client.post("/v2/apps", json=late)
            assert created.status_code == 201, created.text
        lab.running("/drill-late", 1)
        replaced = wait_until(lambda: (r := running(lab)) and len(r) == 2 and victim["id"] not in {t["id"] for t in r}
                              and r, timeout=30, message=f"{victim['id']} replaced")
        apps_after, tasks_after = snapshot(lab, leave_out="/drill-late")
        assert apps_after == apps_before
        assert set(tasks_before) - set(tasks_after) == {victim["id"]}
        assert set(tasks_after) - set(tasks_before) == {t["id"] for t in replaced} - drill_tasks
        assert {k: v for k, v in tasks_after.items() if k in tasks_before} == {
            k: v for k, v in tasks_before.items() if k != victim["id"]}
        assert integrity(lab) == [("ok",)]
        master_log = lab.log("master")
        assert "scheduler paused: the state directory" in master_log and "scheduler resumed" in master_log
        assert "restarting the master" not in master_log            # nothing was refused midway
        wait_until(lambda: store_writable(lab) == 1, timeout=10, message="the store's gauge back at 1")
    finally:
        for app_id in ("/drill-late", "/drill"):
            lab.remove_app(app_id)
        with lab.marathon() as client:
            for app_id in ("drill-late", "drill"):
                wait_until(lambda a=app_id: client.get(f"/v2/apps/{a}").status_code == 404, timeout=30,
                           message=f"/{app_id} removed")
