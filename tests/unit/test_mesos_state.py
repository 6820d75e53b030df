"""``/master/state`` carries what Mesos-DNS reads; fed to the Mesos-DNS record generator it gives
the names a DC/OS user expects."""

import pytest

from control.mesos_state import port_ranges
from spartan_dns.records import generate
from tests.unit.master_harness import running_cluster

WEB = {"id": "/shop/web", "cmd": "true", "cpus": 0.1, "mem": 16, "instances": 2,
       "constraints": [["hostname", "UNIQUE"]],
       "portDefinitions": [{"port": 0, "name": "http", "labels": {"VIP_0": "/shop/web:80"}}]}
OVERLAY = {"id": "/db", "cmd": "true", "cpus": 0.1, "mem": 16, "networks": [{"mode": "container", "name": "dcos"}],
           "container": {"type": "MESOS", "portMappings": [{"containerPort": 5432, "name": "pg",
                                                            "labels": {"VIP_0": "/db:5432"}}]}}


@pytest.fixture
async def cluster():
    async with running_cluster(2) as c:
        yield c


def test_port_ranges_in_mesos_text_form():
    assert port_ranges([31002, 31000, 31001, 31005]) == "[31000-31002, 31005-31005]"
    assert port_ranges([]) == "[]"


async def test_state_shape(cluster):
    await cluster.post_app(WEB)
    for path in ("/master/state", "/state", "/master/state.json"):
        assert (await cluster.mesos.get(path)).status_code == 200
    state = (await cluster.mesos.get("/master/state")).json()
    assert state["leader"] == "master@198.18.0.2:5050"
    assert [s["pid"] for s in state["slaves"]] == ["slave(1)@198.18.0.11:5051", "slave(1)@198.18.0.12:5051"]
    assert state["slaves"][0]["resources"]["ports"] == "[31000-31100]"
    (framework,) = state["frameworks"]
    assert framework["name"] == "marathon" and framework["pid"].endswith("@198.18.0.2:8080")
    task = framework["tasks"][0]
    assert task["name"] == "web.shop" and task["id"].startswith("shop_web.")
    assert task["state"] == "TASK_RUNNING" and task["slave_id"] in ("agent-1", "agent-2")
    (port,) = task["discovery"]["ports"]["ports"]
    assert port["name"] == "http" and port["protocol"] == "tcp"
    assert task["resources"]["ports"] == f"[{port['number']}-{port['number']}]"
    assert {"key": "VIP_0", "value": "/shop/web:80"} in port["labels"]["labels"]
    assert [s["state"] for s in task["statuses"]] == ["TASK_STAGING", "TASK_RUNNING"]


async def test_container_ips_travel_in_network_infos(cluster):
    await cluster.post_app(OVERLAY)
    (task,) = cluster.running("/db")
    await cluster.fake.report(task.agent_id, task.task_id, "TASK_RUNNING", ip_addresses=["9.0.1.5"])
    state = (await cluster.mesos.get("/master/state")).json()
    (task_json,) = state["frameworks"][0]["tasks"]
    newest = task_json["statuses"][-1]
    infos = newest["container_status"]["network_infos"]
    assert infos[0]["ip_addresses"] == [{"protocol": "IPv4", "ip_address": "9.0.1.5"}]
    (port,) = task_json["discovery"]["ports"]["ports"]
    assert port["number"] == 5432     # container networks publish the container port
    view = (await cluster.mesos.get("/v1/view")).json()
    (info,) = view["tasks"]
    assert info["network"] == "container" and info["ip_addresses"] == ["9.0.1.5"]
    assert info["ports"][0]["labels"] == {"VIP_0": "/db:5432"}
    assert view["vip_addresses"] == {"marathon:/db": "11.0.0.1"}


async def test_mesos_dns_generator_reads_our_state(cluster):
    await cluster.post_app(WEB)
    await cluster.post_app(OVERLAY)
    (db,) = cluster.running("/db")
    await cluster.fake.report(db.agent_id, db.task_id, "TASK_RUNNING", ip_addresses=["9.0.1.5"])
    state = (await cluster.mesos.get("/master/state")).json()
    records = generate(state, ip_sources=["netinfo", "host"])
    web_ips = {r.value for r in records.by_name("web-shop.marathon.mesos.", "A")}
    assert web_ips == {"198.18.0.11", "198.18.0.12"}
    srv = records.by_name("_web-shop._tcp.marathon.mesos.", "SRV")
    assert len(srv) == 2 and all(31000 <= r.srv()[1] <= 31100 for r in srv)
    assert records.by_name("_http._web-shop._tcp.marathon.mesos.", "SRV")
    assert {r.value for r in records.by_name("db.marathon.mesos.", "A")} == {"9.0.1.5"}
    assert {r.value for r in records.by_name("leader.mesos.", "A")} == {"198.18.0.2"}
    assert {r.value for r in records.by_name("slave.mesos.", "A")} == {"198.18.0.11", "198.18.0.12"}


async def test_agent_reported_ports_keep_the_apps_labels(cluster):
    await cluster.post_app(WEB | {"instances": 1, "constraints": []})
    (task,) = cluster.running("/shop/web")
    await cluster.fake.report(task.agent_id, task.task_id, "TASK_RUNNING", ports=[{"host_port": 31099}])
    (info,) = (await cluster.mesos.get("/v1/view")).json()["tasks"]
    assert info["ports"][0]["host_port"] == 31099
    assert info["ports"][0]["labels"] == {"VIP_0": "/shop/web:80"} and info["ports"][0]["name"] == "http"


async def test_a_udp_tcp_port_is_two_discovery_ports_and_srv_names_for_both(cluster):
    dns = {"id": "/ns", "cmd": "true", "cpus": 0.1, "mem": 16,
           "portDefinitions": [{"port": 0, "name": "dns", "protocol": "udp,tcp", "labels": {"VIP_0": "/ns:53"}}]}
    assert (await cluster.post_app(dns)).status_code == 201
    (task,) = [t for f in (await cluster.mesos.get("/master/state")).json()["frameworks"] for t in f["tasks"]]
    ports = task["discovery"]["ports"]["ports"]
    assert [p["protocol"] for p in ports] == ["tcp", "udp"] and len({p["number"] for p in ports}) == 1
    records = generate((await cluster.mesos.get("/master/state")).json())
    tcp, udp = (records.by_name(f"_ns._{proto}.marathon.mesos.", "SRV") for proto in ("tcp", "udp"))
    assert tcp and udp and {r.srv()[1] for r in tcp} == {r.srv()[1] for r in udp} == {ports[0]["number"]}
    (info,) = (await cluster.mesos.get("/v1/view")).json()["tasks"]
    assert info["ports"][0]["protocol"] == "udp,tcp"
