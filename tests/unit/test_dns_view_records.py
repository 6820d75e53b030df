"""An agent's Mesos-DNS records come from the cluster view alone, and they are the records
Mesos-DNS would make from the master's ``/master/state`` for the same cluster."""

import pytest

from cluster.view import ClusterView
from spartan_dns.records import generate
from spartan_dns.view_state import state_of_view
from tests.unit.master_harness import running_cluster

HOST = {"id": "/shop/web", "cmd": "true", "cpus": 0.1, "mem": 16, "instances": 2,
        "constraints": [["hostname", "UNIQUE"]],
        "portDefinitions": [{"port": 0, "name": "http", "labels": {"VIP_0": "/shop/web:80"}},
                            {"port": 0, "protocol": "udp,tcp"}, {"port": 0, "protocol": "udp"}]}
OVERLAY = {"id": "/db", "cmd": "true", "cpus": 0.1, "mem": 16, "networks": [{"mode": "container", "name": "dcos"}],
           "container": {"type": "MESOS", "portMappings": [{"containerPort": 5432, "name": "pg",
                                                            "labels": {"VIP_0": "/db:5432"}}]}}
BRIDGE = {"id": "/nginx", "cmd": "true", "cpus": 0.1, "mem": 16, "networks": [{"mode": "container/bridge"}],
          "container": {"type": "DOCKER", "docker": {"image": "nginx"},
                        "portMappings": [{"containerPort": 80, "hostPort": 0, "name": "web"}]}}
QUIET = {"id": "/batch/job", "cmd": "true", "cpus": 0.1, "mem": 16}


def _records(source, sources):
    records = generate(source, ip_sources=sources, masters=["198.18.0.2:5050"], listener="198.18.0.11")
    return sorted((r.name, r.rtype, r.value) for r in records)


@pytest.fixture
async def cluster():
    async with running_cluster(2) as c:
        yield c


@pytest.mark.parametrize("sources", [["netinfo", "mesos", "host"], ["host"], ["netinfo", "host"]])
async def test_records_from_the_view_are_those_of_master_state(cluster, sources):
    for app in (HOST, OVERLAY, BRIDGE, QUIET):
        assert (await cluster.post_app(app)).status_code == 201
    (db,) = cluster.running("/db")
    await cluster.fake.report(db.agent_id, db.task_id, "TASK_RUNNING", ip_addresses=["9.0.1.5"])
    (nginx,) = cluster.running("/nginx")
    await cluster.fake.report(nginx.agent_id, nginx.task_id, "TASK_RUNNING", ip_addresses=["9.0.2.130"])
    await cluster.settle()

    state = (await cluster.mesos.get("/master/state")).json()
    view = ClusterView.model_validate((await cluster.mesos.get("/v1/view")).json())
    from_state, from_view = _records(state, sources), _records(state_of_view(view), sources)
    assert from_view == from_state
    names = {name for name, _, _ in from_view}
    # what a user digs for is really there (the comparison above is not between two empty sets)
    assert {"web-shop.marathon.mesos.", "_http._web-shop._tcp.marathon.mesos.", "_web-shop._udp.marathon.mesos.",
            "db.marathon.mesos.", "nginx.marathon.mesos.", "job-batch.marathon.mesos.", "leader.mesos."} <= names


async def test_a_task_that_is_not_running_gets_no_records(cluster):
    assert (await cluster.post_app(QUIET)).status_code == 201
    (task,) = cluster.running("/batch/job")
    await cluster.fake.report(task.agent_id, task.task_id, "TASK_KILLING")
    view = ClusterView.model_validate((await cluster.mesos.get("/v1/view")).json())
    assert [t.state for t in view.tasks] == ["TASK_KILLING"]
    names = {name for name, _, _ in _records(state_of_view(view), ["host"])}
    assert "job-batch.marathon.mesos." not in names
    assert "leader.mesos." in names
