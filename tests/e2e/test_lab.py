"""The lab as a user drives it: the CLI, from the root namespace."""

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from tests.waiting import wait_until

NAVSTAR = [sys.executable, "-m", "navstar"]


def navstar(*args, check=False, timeout=120):
    return subprocess.run([*NAVSTAR, *args], capture_output=True, text=True, check=check, timeout=timeout)


@pytest.fixture
def lab():
    name = f"t{uuid.uuid4().hex[:6]}"
    subnet = f"198.18.{200 + int(name[1:3], 16) % 50}.0/24"
    try:
        yield name, subnet
    finally:
        navstar("lab", "down", "--name", name)


def lab_leftovers(name: str) -> list[str]:
    found = []
    found += [ns for ns in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
              if ns.startswith(f"navstar-{name}-")]
    for tree in ("/sys/fs/cgroup/unified", "/sys/fs/cgroup/cpu", "/sys/fs/cgroup/memory", "/sys/fs/cgroup"):
        if Path(tree, "navstar", name).exists():
            found.append(f"cgroup {tree}/navstar/{name}")
    found += [str(p) for p in Path("/etc/netns").glob(f"navstar-{name}-*")] if Path("/etc/netns").exists() else []
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    from navstar.lab import operator_link
    if operator_link(name) in links:
        found.append("operator link")
    procs = subprocess.run(["pgrep", "-f", f"navstar-{name}-"], capture_output=True, text=True).stdout.split()
    found += [f"pid {p}" for p in procs]
    if Path("/var/lib/navstar/labs", name).exists():
        found.append("lab directory")
    if Path("/sys/fs/bpf/navstar", name).exists():
        found.append("pinned BPF maps")
    for tree in ("/sys/fs/cgroup/unified", "/sys/fs/cgroup"):
        attached = subprocess.run(["bpftool", "cgroup", "show", tree], capture_output=True, text=True).stdout
        if any(hook in attached for hook in ("connect4", "sendmsg4", "recvmsg4", "getpeername4", "sock_ops")):
            found.append(f"BPF programs on the root cgroup {tree}")
    return found


def test_lab_up_exec_status_down(lab):
    name, subnet = lab
    up = navstar("lab", "up", "--name", name, "--agents", "2", "--underlay", subnet)
    assert up.returncode == 0, up.stderr + up.stdout
    status = json.loads(navstar("lab", "status", "--name", name, "--json").stdout)
    assert [n["name"] for n in status["nodes"]] == ["master", "agent-1", "agent-2"]
    assert all(n["up"] for n in status["nodes"])
    master_ip, agent2_ip = status["nodes"][0]["ip"], status["nodes"][2]["ip"]

    # The operator reaches the master's API from the root namespace through Admin Router only.
    secret = (Path("/var/lib/navstar/labs") / name / "secret").read_text().strip()
    assert httpx.get(f"http://{master_ip}/service/marathon/ping", timeout=5,
                     headers={"Authorization": f"token={secret}"}).text == "pong"
    assert httpx.get(f"http://{master_ip}/service/marathon/ping", timeout=5).status_code == 401
    for port in (8080, 5050):
        with pytest.raises(httpx.TimeoutException):
            httpx.get(f"http://{master_ip}:{port}/ping", timeout=1)
    with pytest.raises(httpx.TimeoutException):
        httpx.get(f"http://{agent2_ip}:61091/metrics", timeout=1)
    # Agents reach each other over the underlay.
    assert navstar("lab", "exec", "--name", name, "agent-1", "--", "ping", "-c1", "-W2", agent2_ip).returncode == 0
    # Exit codes pass through; unknown nodes are named.
    assert navstar("lab", "exec", "--name", name, "agent-1", "--", "sh", "-c", "exit 7").returncode == 7
    unknown = navstar("lab", "exec", "--name", name, "agent-9", "--", "true")
    assert unknown.returncode == 2 and "agent-1" in unknown.stderr
    # The node namespace has no way out and resolves through the node resolver.
    routes = navstar("lab", "exec", "--name", name, "agent-1", "--", "ip", "route").stdout
    assert "default" not in routes
    assert "198.51.100.1" in navstar("lab", "exec", "--name", name, "agent-1", "--", "cat", "/etc/resolv.conf").stdout
    # A second `up` changes nothing.
    again = navstar("lab", "up", "--name", name, "--underlay", subnet)
    assert again.returncode == 0 and "already up" in again.stdout
    assert json.loads(navstar("lab", "status", "--name", name, "--json").stdout) == status

    # A dead agent shows as down.
    os.kill(status["nodes"][1]["pid"], signal.SIGKILL)
    wait_until(lambda: [n["up"] for n in json.loads(navstar("lab", "status", "--name", name, "--json").stdout)["nodes"]]
               == [True, False, True], message="the killed agent shown down, the others up")

    assert navstar("lab", "down", "--name", name).returncode == 0
    assert lab_leftovers(name) == []
    assert navstar("lab", "down", "--name", name).returncode == 0


def test_lab_down_cleans_a_partial_start(lab):
    """A start interrupted after the namespaces exist (no processes) is still fully removed."""
    name, subnet = lab
    import ipaddress

    from navstar.lab import Lab

    partial = Lab(name)
    from navstar.lab import LabState, plan_nodes
    net = ipaddress.IPv4Network(subnet)
    state = LabState(name, subnet, 1, "auto", plan_nodes(name, net, 1))
    state.save()
    partial._build(state, net)
    assert lab_leftovers(name)
    assert navstar("lab", "down", "--name", name).returncode == 0
    assert lab_leftovers(name) == []


def test_lab_commands_say_root_is_needed():
    for command in (["lab", "up"], ["lab", "down"], ["lab", "exec", "agent-1", "--", "true"]):
        result = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                                 *NAVSTAR, *command], capture_output=True, text=True, timeout=60)
        assert result.returncode == 1, command
        assert "root is needed" in result.stderr, (command, result.stderr)


def test_scenario_deploys_the_seed_apps_and_curls_their_vips(lab):
    """The main job (`make lab`): the seed apps run on several agents, and their VIP names, dug
    and curled from agent-1, are answered by backends on other agents too."""
    name, subnet = lab
    up = navstar("lab", "up", "--name", name, "--agents", "3", "--underlay", subnet)
    assert up.returncode == 0, up.stderr + up.stdout
    scenario = navstar("lab", "scenario", "--name", name, "--json", "--requests", "30", timeout=180)
    assert scenario.returncode == 0, scenario.stdout + scenario.stderr
    outcome = json.loads(scenario.stdout)
    assert {a["id"] for a in outcome["apps"]} == {"/web", "/nginxdocker", "/nginxmesos", "/nginxmesos1", "/nginx"}
    assert all(a["running"] == a["instances"] for a in outcome["apps"])
    vips = {v["vip"]: v for v in outcome["vips"]}
    assert set(vips) == {"web.marathon.l4lb.thisdcos.directory:80", "nginxdocker.marathon.l4lb.thisdcos.directory:80"}
    for vip in vips.values():
        assert vip["address"].startswith("11.") and vip["failures"] == 0
        assert sum(vip["answers"].values()) == 30 and len(vip["answers"]) >= 2
        assert vip["from"] == "agent-1"
        host = vip["vip"].rpartition(":")[0]
        assert f"{host}." in vip["dig"] and vip["address"] in vip["dig"], vip["dig"]
    tasks = {t["id"]: t for t in outcome["tasks"]}
    assert len(tasks) == sum(a["instances"] for a in outcome["apps"])
    assert len({t["agent"] for t in tasks.values()}) >= 2, outcome["tasks"]
    # Which task answered is known, and its agent is the one the master placed it on.
    for vip in vips.values():
        for task_id, agent in vip["answer_agents"].items():
            assert tasks[task_id]["agent"] == agent
    crossed = {vip["vip"]: vip["from_other_agents"] for vip in vips.values()}
    assert any(other and "agent-1" not in other for other in crossed.values()), crossed

    # The human form says the same, without cutting names at the pipe's 80 columns.
    shown = navstar("lab", "scenario", "--name", name, "--requests", "9", timeout=180)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "answered by backends on other agents (agent-" in shown.stdout
    assert "dig @198.51.100.1" in shown.stdout and "IN A" in shown.stdout and "11.0.0." in shown.stdout
    assert "…" not in shown.stdout
    assert f"lab down --name {name}" in shown.stdout and "127.0.0.1:9090" not in shown.stdout
