"""Three masters on a ZooKeeper ensemble (issue 15), driven from outside as an operator would:
the leader's znode is Mesos MasterInfo; followers proxy Marathon and redirect Mesos; kill -9 of
the leader loses nothing (apps, task ids, VIP addresses, overlay allocations, VIP traffic); a
leader stopped past its session timeout does not lead when it wakes; ZooKeeper below quorum
refuses writes with 503 JSON while reads and VIPs keep serving, and writes work again after.

One module-scoped lab (``--masters 3 --agents 2``); the drills run in order and each leaves the
cluster with three masters and a quorum.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from control.leadership import PREFIX
from control.store_zk import node_key
from control.zk import ZkUrl, connect
from navstar import lab_masters
from navstar.frontdoor import ADMIN, admin_password
from navstar.lab import Lab, LabState, process_alive, underlay_namespace
from tests import hygiene
from tests.e2e.conftest import NAVSTAR, LabHandle, _free_subnet, navstar, pid_running
from tests.kernel.zk_ensemble import in_netns
from tests.waiting import wait_until

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
VIP = "ha.marathon.l4lb.thisdcos.directory"


@pytest.fixture(scope="module")
def lab() -> Iterator[LabHandle]:
    handle = LabHandle(f"m{uuid.uuid4().hex[:6]}", _free_subnet(), "auto")
    hygiene.made_lab(handle.name)
    try:
        up = navstar("lab", "up", "--name", handle.name, "--masters", "3", "--agents", "2",
                     "--underlay", handle.subnet, timeout=240)
        assert up.returncode == 0, up.stdout + up.stderr
        app = json.loads((EXAMPLES / "web-vip.json").read_text())
        app.update(id="/ha", instances=2)
        app["portDefinitions"][0]["labels"] = {"VIP_0": "/ha:80"}
        handle.add_app(app)
        handle.running("/ha", 2, timeout=60, healthy=True)
        yield handle
    finally:
        navstar("lab", "down", "--name", handle.name)


def masters(lab: LabHandle) -> list:
    return lab.state.master_nodes


def election(lab: LabHandle, via=None) -> list[tuple[str, dict]]:
    """The masters' znodes, lowest sequence first, read with kazoo from a master's namespace
    (``via``, master-1 by default)."""
    state = lab.state
    url = ZkUrl.parse(lab_masters.zk_url(state.master_nodes))

    def read() -> list[tuple[str, dict]]:
        client = connect(url, session_timeout=4.0, start_timeout=10.0)
        try:
            names = sorted((n for n in client.get_children(url.path) if n.startswith(PREFIX)),
                           key=lambda n: int(n[len(PREFIX):]))
            return [(n, json.loads(client.get(f"{url.path}/{n}")[0])) for n in names]
        finally:
            client.stop()
            client.close()

    return in_netns((via or state.master_nodes[0]).namespace, read)


def stored_apps(lab: LabHandle) -> set[str]:
    """The app ids in ZooKeeper's state (what a new leader would load)."""
    state = lab.state
    url = ZkUrl.parse(lab_masters.zk_url(state.master_nodes))

    def read() -> set[str]:
        client = connect(url, session_timeout=4.0, start_timeout=10.0)
        try:
            return {node_key(n) for n in client.get_children(f"{url.path}/state/apps")}
        finally:
            client.stop()
            client.close()

    return in_netns(state.master_nodes[0].namespace, read)


def leader_node(lab: LabHandle, via=None):
    info = election(lab, via)[0][1]
    return next(n for n in masters(lab) if n.ip == info["address"]["ip"])


def in_master(lab: LabHandle, node, *command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", node.namespace, *command], capture_output=True, text=True,
                          timeout=30)


def front_door(lab: LabHandle, node) -> httpx.Client:
    """Admin Router on one master (each master has one; each sends to the leader)."""
    return httpx.Client(base_url=f"http://{node.ip}/service/marathon", timeout=10,
                        headers={"Authorization": f"token={lab.state.secret()}"})


def read_json(client: httpx.Client, url: str) -> dict:
    """A read through Admin Router, once it answers (right after a drill its upstreams may
    still be moving to the leader)."""
    def answered() -> dict | None:
        resp = client.get(url)
        return resp.json() if resp.status_code == 200 else None
    return wait_until(answered, timeout=30, interval=0.2, message=f"{url} answered through Admin Router")


def snapshot(lab: LabHandle, via) -> dict:
    """What a failover must not change: apps, task ids and start times, VIP addresses, overlay."""
    with front_door(lab, via) as client:
        apps = {a["id"]: (a["instances"], a["version"]) for a in read_json(client, "/v2/apps")["apps"]}
        tasks = {t["id"]: (t["slaveId"], t.get("startedAt"), tuple(t["ports"]))
                 for t in read_json(client, "/v2/tasks")["tasks"]}
    with httpx.Client(timeout=10, headers={"Authorization": f"token={lab.state.secret()}"}) as client:
        view = read_json(client, f"http://{via.ip}/mesos/v1/view")
    return {"apps": apps, "tasks": tasks, "vips": view["vip_addresses"],
            "overlay": {a["agent_id"]: a["overlay"] for a in view["agents"]}}


def assert_same_tasks(before: dict, after: dict, new: tuple[str, ...]) -> None:
    """Every task of before is still there on its agent and ports, a started one with its start
    time (not restarted, not replaced); the only other tasks belong to the drill's new apps."""
    extra = {k for k in after if k not in before and not k.startswith(new)}
    assert not extra, f"tasks that appeared: {extra}"
    for task_id, (agent, started, ports) in before.items():
        assert task_id in after, f"task {task_id} is gone"
        assert after[task_id][0] == agent and after[task_id][2] == ports, (task_id, after[task_id])
        if started is not None:
            assert after[task_id][1] == started, f"task {task_id} restarted: {after[task_id]}"


def post_app(lab: LabHandle, via, app_id: str, timeout: float = 10) -> httpx.Response:
    with front_door(lab, via) as client:
        return client.post("/v2/apps", json={"id": app_id, "cmd": "sleep 3600", "cpus": 0.01, "mem": 16},
                           timeout=timeout)


def accepted(lab: LabHandle, via, app_id: str) -> bool:
    """A write went through (a stopped leader still accepts connections: short tries)."""
    try:
        return post_app(lab, via, app_id, timeout=3).status_code in (200, 201)
    except httpx.TimeoutException:
        return False


def vip_loop(lab: LabHandle, node: str, count: int) -> subprocess.Popen:
    script = f"for i in $(seq {count}); do curl -s -m 2 http://{VIP}/ || echo FAILED; sleep 0.05; done"
    return subprocess.Popen([*NAVSTAR, "lab", "exec", "--name", lab.name, node, "--", "sh", "-c", script],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def answers(loop: subprocess.Popen) -> list[str]:
    out, _err = loop.communicate(timeout=120)
    return out.split()


def restart_master(lab: LabHandle, node) -> None:
    restarted = navstar("lab", "restart", "--name", lab.name, node.name, timeout=120)
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    wait_until(lambda: len(election(lab)) == 3, timeout=30, message="three masters in the election again")


def test_leader_znode_is_mesos_master_info_and_followers_forward(lab):
    nodes = election(lab)
    assert len(nodes) == 3 and all(name.startswith("json.info_") and len(name) == len("json.info_") + 10
                                   for name, _ in nodes)
    info = nodes[0][1]
    ip = info["address"]["ip"]
    assert ip in [n.ip for n in masters(lab)]
    # Mesos keeps the IPv4 address as in_addr.s_addr, read as a little-endian uint32.
    assert info["ip"] == struct.unpack("<I", socket.inet_aton(ip))[0]
    assert info["port"] == 5050 and info["address"]["port"] == 5050
    assert info["pid"] == f"master@{ip}:5050"
    assert info["hostname"] and info["address"]["hostname"] and info["id"] and info["version"]

    leader = leader_node(lab)
    follower = next(n for n in masters(lab) if n is not leader and n.ip != leader.ip)
    secret = lab.state.secret()
    for node in masters(lab):      # every Admin Router names the same leader
        with front_door(lab, node) as client:
            assert client.get("/v2/leader").json() == {"leader": f"{ip}:8080"}
    # A follower: Mesos answers with a redirect to the leader, Marathon proxies to it.
    redirect = in_master(lab, follower, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}",
                         f"http://{follower.ip}:5050/master/redirect")
    assert redirect.stdout.rstrip("/") == f"307 http://{ip}:5050", redirect.stdout
    state = in_master(lab, follower, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}",
                      "-H", f"Authorization: token={secret}", f"http://{follower.ip}:5050/master/state")
    assert state.stdout == f"307 http://{ip}:5050/master/state", state.stdout
    proxied = in_master(lab, follower, "curl", "-s", "-H", f"Authorization: token={secret}",
                        f"http://{follower.ip}:8080/v2/apps/ha")
    assert json.loads(proxied.stdout)["app"]["id"] == "/ha"


def test_kill_9_of_the_leader_loses_nothing(lab, dcos):
    leader = leader_node(lab)
    survivor = next(n for n in masters(lab) if n.name != leader.name)
    before = snapshot(lab, survivor)
    loop = vip_loop(lab, "agent-1", 120)
    wait_until(lambda: lab.exec("agent-1", "curl", "-s", "-m", "2", f"http://{VIP}/").stdout.strip(),
               timeout=20, message="the VIP answering")
    os.kill(leader.pid, signal.SIGKILL)
    wait_until(lambda: leader_node(lab).name != leader.name, timeout=30, message="a new leader elected")
    wait_until(lambda: accepted(lab, survivor, "/after-kill"), timeout=30, interval=0.2,
               message="a POST /v2/apps accepted by the new leader")
    got = answers(loop)
    assert got and "FAILED" not in got, got
    assert set(got) <= set(before["tasks"]), got
    after = snapshot(lab, survivor)
    assert {k: v for k, v in after["apps"].items() if k != "/after-kill"} == before["apps"]
    # No task restarted or replaced: same ids, agents, start times and ports.
    assert_same_tasks(before["tasks"], after["tasks"], ("after-kill.",))
    assert after["vips"] == before["vips"] and after["overlay"] == before["overlay"]
    dcos("cluster", "setup", f"http://{survivor.ip}", "--username", ADMIN,
         f"--password={admin_password(lab.state)}")
    listing = dcos("marathon", "app", "list", "--json")
    assert {a["id"] for a in json.loads(listing.stdout)} >= {"/ha", "/after-kill"}
    restart_master(lab, leader)
    with front_door(lab, survivor) as client:
        assert client.get("/v2/leader").json()["leader"] != f"{leader.ip}:8080"


def test_leader_stopped_past_its_session_does_not_lead_after(lab):
    leader = leader_node(lab)
    other = next(n for n in masters(lab) if n.name != leader.name)
    tasks_before = snapshot(lab, other)["tasks"]
    os.kill(leader.pid, signal.SIGSTOP)
    try:
        new = wait_until(lambda: (n := leader_node(lab)).name != leader.name and n, timeout=30,
                         message="a new leader while the old one is stopped")
        wait_until(lambda: accepted(lab, other, "/during-stop"), timeout=30, interval=0.2,
                   message="a POST /v2/apps accepted by the new leader")
    finally:
        os.kill(leader.pid, signal.SIGCONT)
    # Woken, it finds its session gone and starts again as a follower (same pid, re-executed).
    wait_until(lambda: "leaving leadership" in Path(leader.log).read_text(), timeout=30,
               message="the stopped leader giving up leadership")
    wait_until(lambda: len(election(lab)) == 3, timeout=30, message="it contends again")
    assert leader_node(lab).name == new.name
    assert process_alive(leader.pid)
    own = in_master(lab, leader, "curl", "-s", f"http://{leader.ip}:8080/v2/leader",
                    "-H", f"Authorization: token={lab.state.secret()}")
    assert json.loads(own.stdout) == {"leader": f"{new.ip}:8080"}
    after = snapshot(lab, other)["tasks"]
    assert_same_tasks(tasks_before, after, ("during-stop.",))


def test_quorum_lost_refuses_writes_with_503_and_keeps_serving(lab):
    leader = leader_node(lab)
    state: LabState = lab.state
    victims = [n for n in state.master_nodes if n.name != leader.name]
    via = leader
    before = snapshot(lab, via)
    # One ZooKeeper server down: two of three are a quorum, writes go on.
    os.kill(victims[0].zk_pid, signal.SIGKILL)
    wait_until(lambda: accepted(lab, via, "/one-zk-down"), timeout=30, interval=0.2,
               message="writes accepted with one ZooKeeper server down")
    os.kill(victims[1].zk_pid, signal.SIGKILL)
    try:
        def refused() -> httpx.Response | None:
            resp = post_app(lab, via, "/no-quorum")
            return resp if resp.status_code == 503 else None

        resp = wait_until(refused, timeout=30, interval=0.2, message="writes refused without a quorum")
        body = resp.json()
        assert "ZooKeeper" in body["reason"] and body["message"], body
        # Reads keep serving, and so does the data plane.
        with front_door(lab, via) as client:
            listed = client.get("/v2/apps")
            assert listed.status_code == 200 and "/ha" in {a["id"] for a in listed.json()["apps"]}
        got = answers(vip_loop(lab, "agent-2", 20))
        assert len(got) == 20 and "FAILED" not in got, got
    finally:
        lab_ops = Lab(lab.name)
        fresh = lab.state
        for node in victims:
            if not pid_running(node.zk_pid):
                lab_ops.start_zookeeper(fresh, fresh.node(node.name))
    wait_until(lambda: accepted(lab, via, "/quorum-back"), timeout=60, interval=0.3,
               message="writes accepted again once ZooKeeper has its quorum")
    # Nothing lost; a refused write whose commit was cut off may or may not have committed, but
    # the leader answers what ZooKeeper holds (a leader unsure of it reloads).
    def agreed() -> dict | None:
        after = snapshot(lab, via)
        return after if set(after["apps"]) == set(stored_apps(lab)) else None

    after = wait_until(agreed, timeout=30, message="the leader's apps to be ZooKeeper's")
    assert {k: v for k, v in after["apps"].items()
            if k not in ("/quorum-back", "/no-quorum", "/one-zk-down")} == before["apps"]
    assert_same_tasks(before["tasks"], after["tasks"], ("quorum-back.", "no-quorum.", "one-zk-down."))


def test_leader_cut_off_the_underlay_is_replaced_and_rejoins_as_follower(lab):
    leader = leader_node(lab)
    other = next(n for n in masters(lab) if n.name != leader.name)
    before = snapshot(lab, other)

    def cable(state: str) -> None:
        subprocess.run(["ip", "netns", "exec", underlay_namespace(lab.name), "ip", "link", "set",
                        f"p-{leader.name}"[:15], state], check=True, capture_output=True, timeout=10)

    cable("down")
    try:
        new = wait_until(lambda: (n := leader_node(lab, other)).name != leader.name and n, timeout=30,
                         message="a new leader while the old one is cut off")
        wait_until(lambda: accepted(lab, other, "/during-cut"), timeout=30, interval=0.2,
                   message="a POST /v2/apps accepted by the new leader")
        # Cut off, the old leader's ZooKeeper session cannot go on: it refuses writes.
        own = in_master(lab, leader, "curl", "-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}",
                        "-X", "POST", "-H", f"Authorization: token={lab.state.secret()}",
                        "-H", "Content-Type: application/json", "-d", '{"id": "/cut-off", "cmd": "sleep 1"}',
                        f"http://{leader.ip}:8080/v2/apps")
        assert own.stdout in ("503", "000"), own.stdout
    finally:
        cable("up")
    wait_until(lambda: len(election(lab, other)) == 3, timeout=60, message="the old leader contends again")
    assert leader_node(lab, other).name == new.name and process_alive(leader.pid)
    after = snapshot(lab, other)
    assert "/cut-off" not in after["apps"]
    assert_same_tasks(before["tasks"], after["tasks"], ("during-cut.",))


def test_all_masters_restarted_together_lose_nothing(lab):
    via = masters(lab)[0]
    before = snapshot(lab, via)
    for node in masters(lab):
        os.kill(node.pid, signal.SIGKILL)
    for node in masters(lab):
        started = navstar("lab", "restart", "--name", lab.name, node.name, timeout=120)
        assert started.returncode == 0, started.stdout + started.stderr
    wait_until(lambda: len(election(lab)) == 3, timeout=60, message="three masters in the election")
    wait_until(lambda: accepted(lab, via, "/after-restart"), timeout=60, interval=0.3,
               message="a POST /v2/apps accepted once the masters are back")
    after = snapshot(lab, via)
    assert {k: v for k, v in after["apps"].items() if k != "/after-restart"} == before["apps"]
    assert_same_tasks(before["tasks"], after["tasks"], ("after-restart.",))
    assert after["vips"] == before["vips"] and after["overlay"] == before["overlay"]
