"""CNI configurations (the dcos pair, the loader) and the plugin-chain runner: the configuration
on stdin, the environment, prevResult threading, results and errors — against fakes and against
a plugin script run as a real process."""

from __future__ import annotations

import json
import os
import stat
import textwrap
from pathlib import Path

import pytest

from cluster.view import OverlayAllocation
from overlay.cni import (
    DCOS_DOCKER_NETWORK,
    DCOS_NETWORK,
    CniConfigError,
    NetworkDirectory,
    dcos_networks,
    parse_config,
    write_config,
)
from overlay.cni_exec_fake import FakeExec, FakeIpam, passthrough
from overlay.cni_exec_kernel import SubprocessExec
from overlay.cni_networks import CniNetworks, NetworkUnavailable
from overlay.cni_runner import Attachment, CniError, CniRunner, container_addresses
from tests.waiting import wait_until

ALLOCATION = OverlayAllocation(vtep_ip="44.128.0.1", vtep_mac="70:b3:d5:80:00:01", subnet="9.0.3.0/24",
                               m_dcos="9.0.3.0/25", d_dcos="9.0.3.128/25")


def lab_net(name: str = "lab-net", plugin: str = "bridge", version: str = "1.0.0") -> dict:
    return {"cniVersion": version, "name": name, "type": plugin, "bridge": "lab0",
            "ipam": {"type": "host-local", "subnet": "198.19.77.0/24"}}


# -- the dcos pair ---------------------------------------------------------------------------
def test_dcos_pair_is_bridge_host_local_over_each_half_with_mtu_and_portmap(tmp_path):
    mesos, docker = dcos_networks(ALLOCATION, 1420, tmp_path / "store")
    assert (mesos.name, docker.name) == (DCOS_NETWORK, DCOS_DOCKER_NETWORK)
    for config, bridge, half, gateway in ((mesos, "m-dcos", "9.0.3.0/25", "9.0.3.1"),
                                          (docker, "d-dcos", "9.0.3.128/25", "9.0.3.129")):
        assert config.cni_version == "1.0.0" and config.types == ["bridge", "portmap"]
        first = config.plugins[0]
        assert (first["bridge"], first["mtu"], first["isGateway"], first["ipMasq"]) == (bridge, 1420, True, False)
        assert first["ipam"]["type"] == "host-local"
        assert first["ipam"]["ranges"] == [[{"subnet": half, "gateway": gateway}]]
        assert first["ipam"]["routes"] == [{"dst": "0.0.0.0/0"}]
        assert first["ipam"]["dataDir"] == str(tmp_path / "store")
        assert config.plugins[1]["capabilities"] == {"portMappings": True}


def test_written_dcos_configs_load_back_and_rewriting_the_same_changes_nothing(tmp_path):
    for config in dcos_networks(ALLOCATION, 1420, tmp_path / "store"):
        assert write_config(tmp_path / "cni", config) is True
        assert write_config(tmp_path / "cni", config) is False
    scan = NetworkDirectory(tmp_path / "cni", plugin_exists=lambda t: True).scan()
    assert sorted(scan.networks) == ["dcos", "dcos-docker"] and scan.skipped == {}
    assert scan.networks["dcos"].config == dcos_networks(ALLOCATION, 1420, tmp_path / "store")[0]


# -- the loader ------------------------------------------------------------------------------
def test_a_conf_is_a_chain_of_one_with_name_and_version_lifted():
    config = parse_config(lab_net(), "lab-net.conf")
    assert (config.name, config.cni_version, config.types) == ("lab-net", "1.0.0", ["bridge"])
    assert "name" not in config.plugins[0] and config.plugins[0]["bridge"] == "lab0"


@pytest.mark.parametrize(("raw", "says"), [
    ([], "expected a JSON object"),
    ({"cniVersion": "1.0.0", "name": "x"}, "neither 'plugins'"),
    ({**lab_net(), "name": "bad name"}, "name: "),
    (lab_net(version="0.2.0"), "cniVersion '0.2.0' is not supported"),
    ({"cniVersion": "1.0.0", "name": "x", "plugins": []}, "plugins"),
    ({"cniVersion": "1.0.0", "name": "x", "plugins": [{"type": "../../bin/sh"}]}, "plugins[0].type"),
])
def test_bad_configurations_are_refused_naming_the_field(raw, says):
    with pytest.raises(CniConfigError, match="lab.conf") as caught:
        parse_config(raw, "lab.conf")
    assert says in str(caught.value)


def test_loader_skips_bad_files_with_their_error_and_keeps_the_others(tmp_path, caplog):
    (tmp_path / "10-good.conflist").write_text(json.dumps(
        {"cniVersion": "1.0.0", "name": "good", "plugins": [{"type": "bridge"}, {"type": "portmap"}]}))
    (tmp_path / "20-broken.conf").write_text("{not json")
    (tmp_path / "30-missing.conf").write_text(json.dumps(lab_net("missing", plugin="nosuchplugin")))
    (tmp_path / "40-dup.conf").write_text(json.dumps(lab_net("good")))
    (tmp_path / "50-lab.json").write_text(json.dumps(lab_net()))
    (tmp_path / "README.txt").write_text("not a configuration")
    directory = NetworkDirectory(tmp_path, plugin_exists=lambda t: t in ("bridge", "portmap"))
    scan = directory.scan()
    assert sorted(scan.networks) == ["good", "lab-net"]
    assert set(scan.skipped) == {str(tmp_path / n) for n in ("20-broken.conf", "30-missing.conf", "40-dup.conf")}
    assert "not JSON" in scan.skipped[str(tmp_path / "20-broken.conf")]
    assert "plugin 'nosuchplugin' is not installed" in scan.skipped[str(tmp_path / "30-missing.conf")]
    assert "already defined by" in scan.skipped[str(tmp_path / "40-dup.conf")]
    assert sum("20-broken.conf" in r.getMessage() for r in caplog.records) == 1
    caplog.clear()
    directory.scan()            # unchanged files: no second log line
    assert not any("skipping" in r.getMessage() for r in caplog.records)
    (tmp_path / "20-broken.conf").write_text(json.dumps(lab_net("fixed")))
    assert "fixed" in directory.scan().networks
    described = directory.last.describe()
    assert [n["name"] for n in described["networks"]] == ["fixed", "good", "lab-net"]
    assert len(described["skipped"]) == 2


def test_loader_of_a_missing_directory_has_no_networks(tmp_path):
    assert NetworkDirectory(tmp_path / "absent").scan().networks == {}


# -- the runner against fakes ----------------------------------------------------------------
def chain(*types: str, **extra) -> dict:
    return {"cniVersion": "1.0.0", "name": "net1", "plugins": [{"type": t, **extra.get(t, {})} for t in types]}


def test_add_threads_prev_result_and_gives_only_capable_plugins_their_runtime_config():
    ipam = FakeIpam()
    fake = FakeExec({"bridge": ipam, "portmap": passthrough, "tuning": passthrough})
    network = parse_config(chain("bridge", "portmap", "tuning", portmap={"capabilities": {"portMappings": True}}))
    mappings = [{"hostPort": 31001, "containerPort": 80, "protocol": "tcp"}]
    attachment = CniRunner(fake).add(network, "task-1", "/run/netns/t1", "eth0", {"portMappings": mappings})
    assert fake.commands() == [("ADD", "bridge"), ("ADD", "portmap"), ("ADD", "tuning")]
    bridge, portmap, tuning = fake.calls
    assert bridge.env == {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "task-1", "CNI_NETNS": "/run/netns/t1",
                          "CNI_IFNAME": "eth0", "CNI_PATH": "/fake/cni"}
    assert bridge.config["name"] == "net1" and bridge.config["cniVersion"] == "1.0.0"
    assert "prevResult" not in bridge.config and "runtimeConfig" not in bridge.config
    assert portmap.config["prevResult"]["ips"][0]["address"] == "10.9.0.2/24"
    assert portmap.config["runtimeConfig"] == {"portMappings": mappings}
    assert "runtimeConfig" not in tuning.config and tuning.config["prevResult"] == portmap.config["prevResult"]
    assert attachment.ips == ["10.9.0.2"] and attachment.addresses == ["10.9.0.2/24"]


def test_del_runs_in_reverse_with_the_cached_result_and_check_in_order():
    ipam = FakeIpam()
    fake = FakeExec({"bridge": ipam, "portmap": passthrough})
    runner = CniRunner(fake)
    attachment = runner.add(parse_config(chain("bridge", "portmap")), "t", "/run/netns/t")
    restored = Attachment.from_dict(json.loads(json.dumps(attachment.to_dict())))
    assert runner.check(restored) is True
    runner.delete(restored)
    assert fake.commands()[2:] == [("CHECK", "bridge"), ("CHECK", "portmap"), ("DEL", "portmap"), ("DEL", "bridge")]
    assert all(c.config["prevResult"] == attachment.result for c in fake.calls[2:])
    assert ipam.leases == {}


def test_check_is_skipped_for_old_versions_and_disable_check():
    fake = FakeExec({"bridge": FakeIpam()})
    runner = CniRunner(fake)
    old = runner.add(parse_config({**chain("bridge"), "cniVersion": "0.3.1"}), "a", "/run/netns/a")
    off = runner.add(parse_config({**chain("bridge"), "disableCheck": True}), "b", "/run/netns/b")
    assert runner.check(old) is False and runner.check(off) is False
    assert "CHECK" not in [c for c, _ in fake.commands()]


def test_failed_add_reports_the_plugins_error_and_deletes_the_whole_chain():
    ipam = FakeIpam()
    fake = FakeExec({"bridge": ipam, "broken": lambda env, cfg: (1, {"cniVersion": "1.0.0", "code": 7,
                                                                    "msg": "no carrier", "details": "lab0 is down"})})
    with pytest.raises(CniError) as caught:
        CniRunner(fake).add(parse_config(chain("bridge", "broken")), "t", "/run/netns/t")
    assert str(caught.value) == "CNI network 'net1': plugin broken ADD failed: no carrier (lab0 is down) [code 7]"
    assert fake.commands() == [("ADD", "bridge"), ("ADD", "broken"), ("DEL", "broken"), ("DEL", "bridge")]
    assert ipam.leases == {}


def test_a_hanging_plugin_is_a_timeout_error_and_its_chain_is_deleted():
    ipam = FakeIpam()
    fake = FakeExec({"bridge": ipam, "slow": passthrough})
    fake.hang.add("slow")
    with pytest.raises(CniError, match=r"plugin slow ADD failed: no answer within 0.5s; killed"):
        CniRunner(fake, timeout=0.5).add(parse_config(chain("bridge", "slow")), "t", "/run/netns/t")
    assert ipam.leases == {}


def test_error_without_json_uses_stderr_then_status():
    from overlay.cni_runner import PluginOutput, _plugin_error

    assert "boom" in str(_plugin_error("n", "p", "ADD", PluginOutput(2, b"", b"boom\n")))
    assert "exited with status 2" in str(_plugin_error("n", "p", "ADD", PluginOutput(2, b"", b"")))


def test_container_addresses_are_the_sandbox_interfaces_ones():
    result = {"interfaces": [{"name": "br"}, {"name": "eth0", "sandbox": "/run/netns/x"}],
              "ips": [{"address": "10.0.0.1/24", "interface": 0}, {"address": "10.0.0.5/24", "interface": 1},
                      {"address": "fd00::5/64"}]}
    assert container_addresses(result) == ["10.0.0.5/24", "fd00::5/64"]


# -- attachments -----------------------------------------------------------------------------
def networks_with(tmp_path: Path, fake: FakeExec) -> CniNetworks:
    directory = NetworkDirectory(tmp_path / "cni", plugin_exists=lambda t: t in fake.plugins)
    return CniNetworks(directory, CniRunner(fake), tmp_path / "attachments", tmp_path / "store")


def test_attachments_are_idempotent_recorded_and_released(tmp_path):
    ipam = FakeIpam()
    fake = FakeExec({"bridge": ipam, "portmap": passthrough})
    cni = networks_with(tmp_path, fake)
    cni.write_dcos(ALLOCATION, 1420)
    first = cni.attach("task-1", "ns-1", "dcos", [(31005, 80, "tcp")])
    assert cni.attach("task-1", "ns-1", "dcos") == first and len(fake.calls) == 2
    assert fake.calls[0].env["CNI_NETNS"] == "/run/netns/ns-1"
    assert fake.calls[1].config["runtimeConfig"]["portMappings"] == [
        {"hostPort": 31005, "containerPort": 80, "protocol": "tcp"}]
    assert cni.task_ids() == ["task-1"]
    cni.detach("task-1")
    cni.detach("task-1")
    assert fake.commands()[2:] == [("DEL", "portmap"), ("DEL", "bridge")]
    assert fake.calls[2].config["runtimeConfig"]["portMappings"][0]["hostPort"] == 31005
    assert cni.task_ids() == [] and ipam.leases == {}


def test_unknown_network_names_the_configured_ones(tmp_path):
    cni = networks_with(tmp_path, FakeExec({"bridge": FakeIpam(), "portmap": passthrough}))
    cni.write_dcos(ALLOCATION, 1420)
    with pytest.raises(NetworkUnavailable, match=r"'lab-net' is not configured .*configured: dcos, dcos-docker"):
        cni.attach("t", "ns", "lab-net")
    (tmp_path / "cni" / "lab-net.conf").write_text(json.dumps(lab_net()))
    assert cni.attach("t", "ns", "lab-net").network == "lab-net"     # dropped in: found at once


def test_failed_attach_keeps_no_record(tmp_path):
    fake = FakeExec({"bridge": FakeIpam(), "portmap": lambda env, cfg: (1, {"code": 999, "msg": "iptables gone"})})
    cni = networks_with(tmp_path, fake)
    cni.write_dcos(ALLOCATION, 1420)
    with pytest.raises(CniError, match="iptables gone"):
        cni.attach("t", "ns", "dcos-docker")
    assert cni.task_ids() == [] and fake.plugins["bridge"].leases == {}


def test_adopt_checks_live_tasks_and_releases_the_dead(tmp_path):
    ipam = FakeIpam()
    fake = FakeExec({"bridge": ipam, "portmap": passthrough})
    cni = networks_with(tmp_path, fake)
    cni.write_dcos(ALLOCATION, 1420)
    cni.attach("alive", "ns-a", "dcos")
    cni.attach("dead", "ns-d", "dcos")
    fake.calls.clear()
    # A new agent process: a fresh object over the same records.
    again = networks_with(tmp_path, fake)
    done = again.adopt({"alive": "ns-a"})
    assert sorted(fake.commands()) == sorted([("CHECK", "bridge"), ("CHECK", "portmap"),
                                              ("DEL", "portmap"), ("DEL", "bridge")])
    assert [c.env["CNI_CONTAINERID"] for c in fake.calls if c.command == "DEL"] == ["dead", "dead"]
    assert again.task_ids() == ["alive"] and list(ipam.leases) == ["alive"]
    assert any("dead: gone; released 10.9.0.3/24" in line for line in done)


# -- the real exec, with a plugin script -----------------------------------------------------
PLUGIN_SCRIPT = textwrap.dedent("""\
    #!/bin/sh
    # Records what it was given, answers like a plugin.
    log="$(dirname "$0")/calls"
    config="$(cat)"
    printf '%s %s %s %s %s %s\\n' "$CNI_COMMAND" "$CNI_CONTAINERID" "$CNI_NETNS" "$CNI_IFNAME" "$CNI_PATH" "$config" >> "$log"
    case "$CNI_COMMAND" in
      ADD) echo '{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"'"$CNI_NETNS"'"}],
                  "ips":[{"address":"10.77.0.9/24","interface":0}]}' ;;
      CHECK) echo '{"cniVersion":"1.0.0","code":4,"msg":"eth0 has no address","details":"checked"}'; exit 1 ;;
    esac
    """)


def script_plugin(directory: Path, name: str, body: str) -> None:
    path = directory / name
    path.write_text(body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def test_subprocess_exec_passes_env_and_stdin_and_parses_results_and_errors(tmp_path):
    script_plugin(tmp_path, "recorder", PLUGIN_SCRIPT)
    runner = CniRunner(SubprocessExec([tmp_path]), timeout=5)
    network = parse_config({"cniVersion": "1.0.0", "name": "rec", "type": "recorder", "answer": 42})
    attachment = runner.add(network, "task-9", "/run/netns/x", "eth0")
    assert attachment.ips == ["10.77.0.9"]
    with pytest.raises(CniError, match=r"plugin recorder CHECK failed: eth0 has no address \(checked\) \[code 4\]"):
        runner.check(attachment)
    runner.delete(attachment)
    lines = (tmp_path / "calls").read_text().splitlines()
    assert [line.split(" ", 5)[:5] for line in lines] == [
        [command, "task-9", "/run/netns/x", "eth0", str(tmp_path)] for command in ("ADD", "CHECK", "DEL")]
    add_config = json.loads(lines[0].split(" ", 5)[5])
    assert add_config == {"type": "recorder", "answer": 42, "cniVersion": "1.0.0", "name": "rec"}
    assert json.loads(lines[2].split(" ", 5)[5])["prevResult"]["ips"][0]["address"] == "10.77.0.9/24"


def test_subprocess_exec_kills_a_hanging_plugin_and_its_children(tmp_path):
    script_plugin(tmp_path, "hang", "#!/bin/sh\nsleep 30 &\necho $! >> \"$(dirname \"$0\")/children\"\nwait\n")
    with pytest.raises(CniError, match="no answer within 0.5s"):
        CniRunner(SubprocessExec([tmp_path]), timeout=0.5).add(
            parse_config({"cniVersion": "1.0.0", "name": "h", "type": "hang"}), "t", "/run/netns/t")
    children = [int(pid) for pid in (tmp_path / "children").read_text().split()]
    assert len(children) == 2       # ADD, then DEL over the chain: both hung, both killed

    def gone(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
        except FileNotFoundError:
            return True

    wait_until(lambda: all(gone(pid) for pid in children), timeout=5, message="the plugins' children killed")


def test_subprocess_exec_names_a_missing_plugin(tmp_path):
    with pytest.raises(CniError, match="plugin nothere ADD failed: not installed in"):
        CniRunner(SubprocessExec([tmp_path])).add(
            parse_config({"cniVersion": "1.0.0", "name": "m", "type": "nothere"}), "t", "/run/netns/t")
    assert os.listdir(tmp_path) == []


# -- which network a launch joins, and what portmap gets (the agent's adapter) ----------------
def test_launches_map_to_dcos_its_docker_twin_or_their_named_network(tmp_path):
    from cluster.view import TaskPort
    from control.protocol import TaskLaunch
    from navstar.agent_main import CniContainerNetworks, cni_network_for

    def launch(**kw) -> TaskLaunch:
        return TaskLaunch(task_id="t1", app_id="/a", name="a", cmd="x", **kw)

    assert cni_network_for(launch(network="container", network_name="dcos", container_type="MESOS")) == "dcos"
    assert cni_network_for(launch(network="container", network_name="dcos", container_type="DOCKER")) == "dcos-docker"
    assert cni_network_for(launch(network="bridge", container_type="DOCKER")) == "dcos-docker"
    assert cni_network_for(launch(network="container", network_name="lab-net", container_type="DOCKER")) == "lab-net"
    fake = FakeExec({"bridge": FakeIpam(), "portmap": passthrough})
    cni = networks_with(tmp_path, fake)
    cni.write_dcos(ALLOCATION, 1420)
    ports = [TaskPort(host_port=31007, container_port=80, protocol="udp,tcp"), TaskPort(container_port=9000)]
    ips, bound = CniContainerNetworks(cni).attach("t1", "ns", launch(network="bridge", container_type="DOCKER",
                                                                     ports=ports))
    assert ips == ["10.9.0.2"] and bound == ports
    assert fake.calls[1].config["runtimeConfig"]["portMappings"] == [
        {"hostPort": 31007, "containerPort": 80, "protocol": "tcp"},
        {"hostPort": 31007, "containerPort": 80, "protocol": "udp"}]
