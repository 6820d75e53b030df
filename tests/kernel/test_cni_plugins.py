"""The real CNI plugins from Debian's containernetworking-plugins (/usr/lib/cni), run by
navstar's runner into task namespaces: bridge + host-local + portmap on an overlay-like bridge,
loopback, DEL leaving nothing (no veth, no host-local lease, no DNAT rule), a broken and a hanging
plugin leaving nothing, adoption releasing the leases of tasks that died, and the executor failing
a task with the plugin's message. Each test has its own "agent" namespace (where the plugins run,
as in the lab) and removes the task namespaces it made."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster.view import OverlayAllocation, TaskPort
from control.agent.executor import Executor
from control.protocol import TaskLaunch
from overlay.cni import NetworkDirectory
from overlay.cni_exec_kernel import SubprocessExec
from overlay.cni_networks import CniNetworks
from overlay.cni_runner import CniError, CniRunner
from overlay.desired import bridge_mac
from tests import hygiene
from tests.waiting import wait_until

PLUGINS = Path("/usr/lib/cni")
ALLOCATION = OverlayAllocation(vtep_ip="44.128.0.1", vtep_mac="70:b3:d5:80:00:01", subnet="9.0.7.0/24",
                               m_dcos="9.0.7.0/25", d_dcos="9.0.7.128/25")
BROKEN = """#!/bin/sh
cat > /dev/null
echo '{"cniVersion":"1.0.0","code":11,"msg":"lab0 refused the port","details":"injected by the test"}'
exit 1
"""
HANGING = "#!/bin/sh\nexec sleep 60\n"

pytestmark = pytest.mark.skipif(not (PLUGINS / "bridge").exists(), reason="containernetworking-plugins missing")


@pytest.fixture
def agent(netns) -> Iterator[dict]:
    """The test namespace as an agent: m-dcos/d-dcos with their gateways (what the overlay sets
    up), a CNI directory, plugin dirs (a scratch one first for broken plugins), task namespaces."""
    scratch = Path(tempfile.mkdtemp(prefix="navstar-cni-", dir="/var/tmp"))
    for bridge, address in (("m-dcos", "9.0.7.1/25"), ("d-dcos", "9.0.7.129/25")):
        # A fixed MAC, as the overlay gives its bridges (bridge CHECK compares it with ADD's).
        netns.run("ip", "link", "add", bridge, "address", bridge_mac(address.replace(".1/", ".0/").replace(".129/", ".128/")),
                  "type", "bridge")
        netns.run("ip", "addr", "add", address, "dev", bridge)
        netns.run("ip", "link", "set", bridge, "up")
    (scratch / "plugins").mkdir()
    for name, body in (("broken", BROKEN), ("hanging", HANGING)):
        (scratch / "plugins" / name).write_text(body)
        (scratch / "plugins" / name).chmod(0o755)
    dirs = [str(scratch / "plugins"), str(PLUGINS)]
    made: list[str] = []

    def task_namespace() -> str:
        name = f"{netns.name}-t{uuid.uuid4().hex[:6]}"
        hygiene.made_namespace(name, netns.cgroup.relpath)
        subprocess.run(["ip", "netns", "add", name], check=True)
        made.append(name)
        return name

    def networks(timeout: float = 5.0) -> CniNetworks:
        return CniNetworks(NetworkDirectory(scratch / "cni", dirs),
                           CniRunner(SubprocessExec(dirs, netns=netns.name), timeout=timeout),
                           scratch / "attachments", scratch / "store")

    try:
        yield {"netns": netns, "dir": scratch, "store": scratch / "store", "task_namespace": task_namespace,
               "networks": networks}
    finally:
        for name in made:
            subprocess.run(["ip", "netns", "del", name], check=False)
        shutil.rmtree(scratch, ignore_errors=True)


def run_in(namespace: str, *command: str) -> str:
    return subprocess.run(["ip", "netns", "exec", namespace, *command], capture_output=True, text=True,
                          check=True, timeout=20).stdout


def veths(agent: dict) -> list[str]:
    out = agent["netns"].run("ip", "-o", "link", "show", "type", "veth").stdout
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]


def leases(agent: dict, network: str) -> dict[str, str]:
    """host-local's store: address file → the container id it holds."""
    directory = agent["store"] / network
    if not directory.is_dir():
        return {}
    return {p.name: p.read_text().split()[0] for p in directory.iterdir() if p.name[0].isdigit()}


def dnat_rules(agent: dict) -> str:
    out = agent["netns"].run("iptables-save", "-t", "nat").stdout
    return "\n".join(line for line in out.splitlines() if "DNAT" in line and "--to-destination" in line)


def test_dcos_attach_gives_the_task_its_address_route_mtu_and_port_mapping_and_del_leaves_nothing(agent):
    cni = agent["networks"]()
    cni.write_dcos(ALLOCATION, 1420)
    task_ns = agent["task_namespace"]()
    attachment = cni.attach("web.1", task_ns, "dcos", [(31005, 8080, "tcp")])
    (ip,) = attachment.ips
    assert ip.startswith("9.0.7.") and 2 <= int(ip.rsplit(".", 1)[1]) <= 126
    assert f"inet {ip}/25 " in run_in(task_ns, "ip", "-o", "addr", "show", "eth0")
    assert "mtu 1420" in run_in(task_ns, "ip", "link", "show", "eth0")
    assert "default via 9.0.7.1 dev eth0" in run_in(task_ns, "ip", "route")
    (veth,) = veths(agent)
    assert "master m-dcos" in agent["netns"].run("ip", "link", "show", veth).stdout
    assert leases(agent, "dcos") == {ip: "web.1"}
    assert f"--to-destination {ip}:8080" in dnat_rules(agent)
    # Traffic: the agent reaches the task by address and through its host port.
    server = subprocess.Popen(["ip", "netns", "exec", task_ns, "python3", "-m", "http.server", "8080",
                               "--bind", ip], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for url in (f"http://{ip}:8080/", "http://9.0.7.1:31005/"):
            wait_until(lambda u=url: agent["netns"].run("curl", "-sf", "-m", "2", "-o", "/dev/null", u,
                                                         check=False).returncode == 0,
                       timeout=10, message=f"{url} from the agent")
    finally:
        server.kill()
        server.wait()
    cni.detach("web.1")
    assert veths(agent) == [] and leases(agent, "dcos") == {} and dnat_rules(agent) == ""
    assert "eth0" not in run_in(task_ns, "ip", "-o", "link")
    assert cni.task_ids() == []


def test_docker_twin_uses_d_dcos_and_the_loopback_plugin_brings_lo_up(agent):
    cni = agent["networks"]()
    cni.write_dcos(ALLOCATION, 1420)
    (agent["dir"] / "cni" / "lo.conf").write_text(json.dumps({"cniVersion": "1.0.0", "name": "lo", "type": "loopback"}))
    task_ns = agent["task_namespace"]()
    assert "state DOWN" in run_in(task_ns, "ip", "link", "show", "lo")
    loopback = CniRunner(SubprocessExec([str(PLUGINS)], netns=agent["netns"].name)).add(
        cni.network("lo"), "d.1", f"/run/netns/{task_ns}", "lo")
    assert "127.0.0.1/8" in loopback.addresses
    assert "LOOPBACK,UP" in run_in(task_ns, "ip", "link", "show", "lo")
    attachment = cni.attach("d.1", task_ns, "dcos-docker")
    assert attachment.ips[0].startswith("9.0.7.") and int(attachment.ips[0].rsplit(".", 1)[1]) > 129
    assert "default via 9.0.7.129" in run_in(task_ns, "ip", "route")
    cni.detach("d.1")
    assert leases(agent, "dcos-docker") == {} and veths(agent) == []


def test_a_user_bridge_network_dropped_into_the_directory_is_usable(agent):
    cni = agent["networks"]()
    (agent["dir"] / "cni").mkdir(parents=True)
    (agent["dir"] / "cni" / "lab-net.conf").write_text(json.dumps({
        "cniVersion": "1.0.0", "name": "lab-net", "type": "bridge", "bridge": "labnet0", "isGateway": True,
        "ipam": {"type": "host-local", "subnet": "198.19.77.0/24", "dataDir": str(agent["store"])}}))
    (agent["dir"] / "cni" / "zz-bad.conflist").write_text("{")
    assert sorted(cni.scan().networks) == ["lab-net"]
    task_ns = agent["task_namespace"]()
    (ip,) = cni.attach("lab.1", task_ns, "lab-net").ips
    assert ip.startswith("198.19.77.")
    assert agent["netns"].run("ping", "-c", "1", "-W", "2", ip, check=False).returncode == 0
    cni.detach("lab.1")
    assert leases(agent, "lab-net") == {} and veths(agent) == []
    agent["netns"].run("ip", "link", "del", "labnet0")


def test_a_macvlan_network_on_a_node_interface(agent):
    netns = agent["netns"]
    netns.run("ip", "link", "add", "node0", "type", "veth", "peer", "name", "node0p")
    netns.run("ip", "link", "set", "node0", "up")
    cni = agent["networks"]()
    (agent["dir"] / "cni").mkdir(parents=True)
    (agent["dir"] / "cni" / "mac.conf").write_text(json.dumps({
        "cniVersion": "1.0.0", "name": "mac", "type": "macvlan", "master": "node0", "mode": "bridge",
        "ipam": {"type": "host-local", "subnet": "198.19.90.0/24", "dataDir": str(agent["store"])}}))
    task_ns = agent["task_namespace"]()
    (ip,) = cni.attach("m.1", task_ns, "mac").ips
    assert ip.startswith("198.19.90.") and "macvlan" in run_in(task_ns, "ip", "-d", "link", "show", "eth0")
    assert leases(agent, "mac") == {ip: "m.1"}
    cni.detach("m.1")
    assert leases(agent, "mac") == {} and "eth0" not in run_in(task_ns, "ip", "-o", "link")
    netns.run("ip", "link", "del", "node0")


@pytest.mark.parametrize(("plugin", "says"), [("broken", "plugin broken ADD failed: lab0 refused the port "
                                                          "(injected by the test) [code 11]"),
                                              ("hanging", "plugin hanging ADD failed: no answer within 1s; killed")])
def test_a_failing_or_hanging_plugin_after_bridge_leaves_nothing(agent, plugin, says):
    cni = agent["networks"](timeout=1.0)
    (agent["dir"] / "cni").mkdir(parents=True)
    chain = {"cniVersion": "1.0.0", "name": "faulty", "plugins": [
        {"type": "bridge", "bridge": "m-dcos", "isGateway": True,
         "ipam": {"type": "host-local", "subnet": "9.0.7.0/25", "dataDir": str(agent["store"])}},
        {"type": plugin}]}
    (agent["dir"] / "cni" / "faulty.conflist").write_text(json.dumps(chain))
    task_ns = agent["task_namespace"]()
    with pytest.raises(CniError) as caught:
        cni.attach("f.1", task_ns, "faulty")
    assert says in str(caught.value)
    assert veths(agent) == [] and leases(agent, "faulty") == {} and cni.task_ids() == []
    assert "eth0" not in run_in(task_ns, "ip", "-o", "link")


def test_adoption_checks_live_tasks_and_releases_leases_of_dead_ones(agent):
    cni = agent["networks"]()
    cni.write_dcos(ALLOCATION, 1420)
    alive, dead = agent["task_namespace"](), agent["task_namespace"]()
    kept = cni.attach("alive.1", alive, "dcos").ips[0]
    cni.attach("dead.1", dead, "dcos")
    assert len(leases(agent, "dcos")) == 2
    restarted = agent["networks"]()           # a new agent process over the same records
    done = restarted.adopt({"alive.1": alive})
    assert any(line == "task alive.1: CHECK passed on dcos" for line in done), done
    assert leases(agent, "dcos") == {kept: "alive.1"} and len(veths(agent)) == 1
    assert restarted.task_ids() == ["alive.1"]
    restarted.detach("alive.1")
    assert leases(agent, "dcos") == {} and veths(agent) == []


def test_the_executor_fails_a_task_with_the_plugins_message_and_keeps_nothing(agent):
    from navstar.agent_main import CniContainerNetworks

    cni = agent["networks"]()
    (agent["dir"] / "cni").mkdir(parents=True)
    (agent["dir"] / "cni" / "broken-net.conf").write_text(json.dumps(
        {"cniVersion": "1.0.0", "name": "broken-net", "type": "broken"}))
    statuses = []
    work = Path(tempfile.mkdtemp(prefix="navstar-test-", dir="/var/tmp"))
    try:
        ex = Executor(work, "127.0.0.1", statuses.append, cgroup_scope=agent["netns"].cgroup.relpath,
                      netns_prefix=f"{agent['netns'].name}-t", networks=CniContainerNetworks(cni))
        ex.launch(TaskLaunch(task_id="b.1", app_id="/b", name="b", cmd="sleep 60", network="container",
                             network_name="broken-net", container_type="MESOS",
                             ports=[TaskPort(container_port=80)]))
        assert statuses[-1].state == "TASK_FAILED"
        assert "plugin broken ADD failed: lab0 refused the port" in statuses[-1].message
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert f"{agent['netns'].name}-t" not in listed and not ex.tasks and cni.task_ids() == []
    finally:
        shutil.rmtree(work, ignore_errors=True)
