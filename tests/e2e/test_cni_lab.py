"""Issue 23 acceptance in a two-agent lab: container networks through CNI with Debian's plugins.

* the overlay examples run unchanged, now via CNI: each task's address comes from the host-local
  store of the agent's ``dcos``/``dcos-docker`` network (a file per address naming the task), and
  removing the apps empties it;
* a ``bridge`` network ``lab-net`` (198.19.77.0/24) dropped into agent-2's CNI directory is listed
  by that agent's API and ``navstar node list``; an app naming it runs only there, is reachable
  from agent-2, and leaves no allocation when removed; an app naming a network no agent has waits
  in the queue saying so;
* a network whose chain fails after ``bridge`` (``tuning`` refusing a sysctl) fails its task
  with the plugin's message and leaves no interface or allocation;
* a task that dies while its agent is down gives its address back when the agent adopts its state.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
from pathlib import Path

import pytest

from tests.e2e.conftest import REPO, LabHandle, navstar, pid_running, wait_until
from tests.e2e.test_overlay_lab import logged_addresses, sandbox_output

LAB_NET = "198.19.77.0/24"


@pytest.fixture(scope="module")
def lab(lab_factory) -> LabHandle:
    return lab_factory(agents=2)


def work_dir(lab: LabHandle, agent: str) -> Path:
    return lab.state.directory / agent


def leases(directory: Path) -> dict[str, str]:
    """host-local's store of one network: address → the container (task) id holding it."""
    if not directory.is_dir():
        return {}
    return {p.name: p.read_text().split()[0] for p in directory.iterdir() if p.name[0].isdigit()}


def dcos_leases(lab: LabHandle, agent: str, network: str) -> dict[str, str]:
    return leases(work_dir(lab, agent) / "cni" / "networks" / network)


def node_networks(lab: LabHandle) -> dict[str, list[str] | None]:
    listed = lab.cli("node", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    return {n["id"]: n["networks"] for n in json.loads(listed.stdout)}


def agent_networks(lab: LabHandle, agent: str) -> dict:
    """``GET <agent>:5051/v1/networks`` from inside the agent's namespace, as an operator would."""
    out = lab.exec(agent, "curl", "-sf", "-H", f"Authorization: token={lab.state.secret()}",
                   f"http://{lab.ip(agent)}:5051/v1/networks")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def remove(lab: LabHandle, app_id: str) -> None:
    lab.remove_app(app_id)
    with lab.marathon() as client:
        wait_until(lambda: client.get(f"/v2/apps/{app_id.strip('/')}").status_code == 404, timeout=20,
                   message=f"{app_id} removed")


def test_overlay_examples_run_via_cni_with_their_addresses_in_the_host_local_store(lab):
    # Each agent writes the dcos pair once the master's allocation reaches it, and registers again.
    wait_until(lambda: node_networks(lab) == {"agent-1": ["dcos", "dcos-docker"], "agent-2": ["dcos", "dcos-docker"]},
               timeout=20, message="both agents reporting dcos and dcos-docker")
    tasks = {}
    for example, network, half in (("nginxmesos-overlay.json", "dcos", "m_dcos"),
                                   ("nginxdocker-overlay.json", "dcos-docker", "d_dcos")):
        path = REPO / "examples" / example
        app_id = "/" + json.loads(path.read_text())["id"]
        added = lab.cli("app", "add", str(path))
        assert added.returncode == 0, added.stdout + added.stderr
        (task,) = lab.running(app_id, 1, timeout=30)
        tasks[app_id] = (task, network)
        agent = task["slaveId"]
        (address,) = logged_addresses(lab, task)
        config = json.loads((work_dir(lab, agent) / "cni-config" / f"{network}.conflist").read_text())
        (plugin, portmap) = config["plugins"]
        subnet = ipaddress.IPv4Network(plugin["ipam"]["ranges"][0][0]["subnet"])
        assert (plugin["type"], plugin["mtu"], portmap["type"], config["cniVersion"]) == \
            ("bridge", 1420, "portmap", "1.0.0"), config
        assert plugin["bridge"] == half.replace("_", "-") and subnet.prefixlen == 25
        assert address.ip in subnet and address.network == subnet, (address, subnet)
        # The plugin's result is the task's address everywhere: its own view, the master's, the store.
        assert [a["ipAddress"] for a in task["ipAddresses"]] == [str(address.ip)]
        assert dcos_leases(lab, agent, network)[str(address.ip)] == task["id"]
        assert f"MESOS_TASK_ID={task['id']}" in sandbox_output(lab, task)
    described = agent_networks(lab, tasks["/nginxmesos"][0]["slaveId"])
    assert [n["name"] for n in described["networks"]] == ["dcos", "dcos-docker"]
    assert described["networks"][0]["plugins"] == ["bridge", "portmap"]
    for app_id, (task, network) in tasks.items():
        remove(lab, app_id)
        wait_until(lambda t=task, n=network: t["id"] not in dcos_leases(lab, t["slaveId"], n).values(),
                   timeout=15, message=f"{app_id}'s address released")


def test_a_bridge_network_added_to_one_agent_takes_apps_only_there(lab):
    config_dir = work_dir(lab, "agent-2") / "cni-config"
    store = work_dir(lab, "agent-2") / "lab-net-store"
    (config_dir / "lab-net.conf").write_text(json.dumps({
        "cniVersion": "1.0.0", "name": "lab-net", "type": "bridge", "bridge": "labnet0", "isGateway": True,
        "ipam": {"type": "host-local", "subnet": LAB_NET, "dataDir": str(store)}}))
    (config_dir / "zz-typo.conf").write_text('{"cniVersion": "1.0.0", "name": "typo", ')
    wait_until(lambda: node_networks(lab)["agent-2"] == ["dcos", "dcos-docker", "lab-net"], timeout=20,
               message="agent-2 reporting lab-net")
    assert node_networks(lab)["agent-1"] == ["dcos", "dcos-docker"]
    described = agent_networks(lab, "agent-2")
    assert [n["name"] for n in described["networks"]] == ["dcos", "dcos-docker", "lab-net"]
    (skipped,) = described["skipped"]
    assert skipped["file"].endswith("zz-typo.conf") and "not JSON" in skipped["error"]
    assert "CNI: skipping" in lab.log("agent-2") and "zz-typo.conf" in lab.log("agent-2")

    lab.add_app({"id": "/labnet", "cmd": "exec python3 -m http.server 8080", "cpus": 0.1, "mem": 64,
                 "instances": 2, "container": {"type": "MESOS"}, "ipAddress": {"networkName": "lab-net"}})
    tasks = lab.running("/labnet", 2, timeout=30)
    assert {t["slaveId"] for t in tasks} == {"agent-2"}
    addresses = [t["ipAddresses"][0]["ipAddress"] for t in tasks]
    assert all(ipaddress.IPv4Address(a) in ipaddress.IPv4Network(LAB_NET) for a in addresses)
    assert sorted(leases(store / "lab-net").values()) == sorted(t["id"] for t in tasks)
    for address in addresses:
        fetched = wait_until(lambda a=address: (r := lab.exec("agent-2", "curl", "-sf", "-m", "3",
                                                               f"http://{a}:8080/")).returncode == 0 and r,
                             timeout=15, message=f"{address}:8080 from agent-2")
        assert "Directory listing" in fetched.stdout

    lab.add_app({"id": "/nowhere", "cmd": "sleep 600", "cpus": 0.1, "mem": 16,
                 "networks": [{"mode": "container", "name": "weave"}]})

    def queued_reason() -> str | None:
        with lab.marathon() as client:
            queue = client.get("/v2/queue").json()["queue"]
        entry = next((q for q in queue if q["app"]["id"] == "/nowhere"), None)
        reason = entry and entry["processedOffersSummary"]["reason"]
        return reason if reason and "weave" in reason else None

    reason = wait_until(queued_reason, timeout=15, message="/nowhere's queue entry")
    assert "agent-1: no container network 'weave' (has: dcos, dcos-docker)" in reason, reason
    assert "agent-2: no container network 'weave' (has: dcos, dcos-docker, lab-net)" in reason, reason
    remove(lab, "/nowhere")
    remove(lab, "/labnet")
    wait_until(lambda: leases(store / "lab-net") == {}, timeout=15, message="lab-net's addresses released")


def test_a_failing_plugin_fails_its_task_with_the_message_and_leaves_nothing(lab):
    store = work_dir(lab, "agent-1") / "broken-store"
    (work_dir(lab, "agent-1") / "cni-config" / "broken-net.conflist").write_text(json.dumps({
        "cniVersion": "1.0.0", "name": "broken-net", "plugins": [
            {"type": "bridge", "bridge": "brokenbr0", "isGateway": True,
             "ipam": {"type": "host-local", "subnet": "198.19.78.0/24", "dataDir": str(store)}},
            {"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.no_such_knob": "1"}}]}))
    wait_until(lambda: "broken-net" in (node_networks(lab)["agent-1"] or []), timeout=20,
               message="agent-1 reporting broken-net")
    lab.add_app({"id": "/broken", "cmd": "sleep 600", "cpus": 0.1, "mem": 16, "backoffSeconds": 60,
                 "ipAddress": {"networkName": "broken-net"}})

    def failure() -> dict | None:
        with lab.marathon() as client:
            return client.get("/v2/apps/broken").json()["app"].get("lastTaskFailure")

    failed = wait_until(failure, timeout=30, message="/broken's task failure")
    assert failed["state"] == "TASK_FAILED" and failed["host"] == "agent-1"
    assert "plugin tuning ADD failed: open /proc/sys/net/ipv4/conf/eth0/no_such_knob" in failed["message"], failed
    # Nothing behind: no allocation, no veth on the plugin's bridge, no task namespace, no record.
    assert leases(store / "broken-net") == {}
    links = lab.exec("agent-1", "ip", "-o", "link", "show", "master", "brokenbr0")
    assert links.returncode != 0 or links.stdout.strip() == "", links.stdout
    namespaces = os.popen("ip netns list").read()
    assert f"{lab.state.node('agent-1').namespace}-t" not in namespaces
    assert not list((work_dir(lab, "agent-1") / "cni" / "attachments").glob("broken*"))
    remove(lab, "/broken")


def test_a_task_that_died_while_its_agent_was_down_gives_its_address_back(lab):
    lab.add_app({"id": "/orphan", "cmd": "sleep 600", "cpus": 0.1, "mem": 16, "ipAddress": {"networkName": "dcos"},
                 "constraints": [["hostname", "CLUSTER", "agent-1"]]})
    (task,) = lab.running("/orphan", 1, timeout=30)
    address = task["ipAddresses"][0]["ipAddress"]
    assert dcos_leases(lab, "agent-1", "dcos")[address] == task["id"]
    agent = lab.state.node("agent-1")
    record = json.loads((work_dir(lab, "agent-1") / "tasks" / f"{task['id']}.json").read_text())
    os.kill(agent.pid, signal.SIGKILL)
    wait_until(lambda: not pid_running(agent.pid), timeout=10, message="agent-1 stopped")
    os.kill(record["pid"], signal.SIGKILL)
    wait_until(lambda: not pid_running(record["pid"]), timeout=10, message="the task's process gone")
    assert dcos_leases(lab, "agent-1", "dcos")[address] == task["id"]      # nobody released it yet
    restarted = navstar("lab", "restart", "--name", lab.name, "agent-1", timeout=120)
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    wait_until(lambda: address not in dcos_leases(lab, "agent-1", "dcos"), timeout=20,
               message=f"{address} released on adoption")
    remove(lab, "/orphan")
