"""A master restarted from its --state-dir loses nothing and restarts no healthy task."""

import asyncio

from control.agent_client import FakeAgents
from control.store import SqliteStore
from tests.unit.master_harness import Cluster, registration

VIP_APP = {"id": "/shop/web", "cmd": "true", "cpus": 0.1, "mem": 16, "instances": 2,
           "constraints": [["hostname", "UNIQUE"]],
           "portDefinitions": [{"port": 0, "name": "http", "labels": {"VIP_0": "/shop/web:80"}}]}


def launches(fake: FakeAgents) -> int:
    return sum(len(a.launches) for a in fake.agents.values())


async def test_restart_keeps_apps_tasks_agents_and_vips(tmp_path):
    fake = FakeAgents()
    first = Cluster(tmp_path, fake=fake)
    await first.register(1)
    await first.register(2)
    await first.post_app(VIP_APP)
    tasks = {t.task_id for t in first.running("/shop/web")}
    vip = first.master.vips.allocations["marathon:/shop/web"]
    app = (await first.marathon.get("/v2/apps/shop/web")).json()["app"]
    version = first.master.view_version
    await first.close()

    second = Cluster(tmp_path, fake=fake)
    try:
        # Agents come back (re-register and report what they run).
        for index in (1, 2):
            await second.mesos.post("/v1/agents", json=registration(index))
        await second.settle()
        assert {t.task_id for t in second.running("/shop/web")} == tasks
        assert launches(fake) == 2 and fake.kills == []
        again = (await second.marathon.get("/v2/apps/shop/web")).json()["app"]
        assert again["version"] == app["version"] and again["portDefinitions"] == app["portDefinitions"]
        view = (await second.mesos.get("/v1/view")).json()
        assert view["version"] > version
        assert view["vip_addresses"] == {"marathon:/shop/web": vip}
        assert {a["agent_id"] for a in view["agents"]} == {"agent-1", "agent-2"}
        assert all(a["overlay"] for a in view["agents"])
        # The allocator knows the recovered tasks hold resources.
        assert second.master.allocator.allocation("marathon")["cpus"] == 0.2
    finally:
        await second.close()


async def test_restart_mid_deployment_completes_it(tmp_path):
    fake = FakeAgents()
    first = Cluster(tmp_path, fake=fake)
    await first.register(1)
    await first.register(2)
    await first.post_app({"id": "/grow", "cmd": "true", "cpus": 0.1, "mem": 16, "instances": 1})
    fake.auto_run = False
    resp = await first.marathon.put("/v2/apps/grow", json={"instances": 3})
    await first.settle()
    deployment = resp.json()["deploymentId"]
    assert [d["id"] for d in (await first.marathon.get("/v2/deployments")).json()] == [deployment]
    await first.close()     # the master dies with two tasks staging

    second = Cluster(tmp_path, fake=fake)
    try:
        assert [d["id"] for d in (await second.marathon.get("/v2/deployments")).json()] == [deployment]
        fake.auto_run = True
        for agent in fake.agents.values():
            for task_id, status in list(agent.tasks.items()):
                if status.state == "TASK_STAGING":
                    await fake.report(agent.agent_id, task_id, "TASK_RUNNING")
        await second.settle()
        assert len(second.running("/grow")) == 3 and launches(fake) == 3
        assert (await second.marathon.get("/v2/deployments")).json() == []
    finally:
        await second.close()


async def test_vip_address_is_freed_when_no_app_uses_it(tmp_path):
    c = Cluster(tmp_path)
    try:
        await c.register(1)
        await c.post_app(VIP_APP | {"instances": 1, "constraints": []})
        assert "marathon:/shop/web" in c.master.vips.allocations
        await c.marathon.delete("/v2/apps/shop/web")
        await c.settle()
        assert c.master.vips.allocations == {}
        assert dict(SqliteStore(tmp_path).items("vips")) == {}
    finally:
        await c.close()


async def test_view_long_poll_answers_on_change_and_times_out():
    c = Cluster()
    try:
        version = (await c.mesos.get("/v1/view")).json()["version"]
        idle = await c.mesos.get("/v1/view", params={"since": version, "wait": 0.05})
        assert idle.json()["version"] == version
        waiting = asyncio.ensure_future(c.mesos.get("/v1/view", params={"since": version, "wait": 5}))
        assert (await c.mesos.get("/v1/view")).json()["version"] == version   # a request served meanwhile
        assert not waiting.done()
        await c.register(1)
        view = (await asyncio.wait_for(waiting, 2)).json()
        assert view["version"] > version and view["agents"][0]["agent_id"] == "agent-1"
        bad = await c.mesos.get("/v1/view", params={"since": "x"})
        assert bad.status_code == 400
    finally:
        await c.close()


async def test_task_decided_but_never_sent_is_sent_under_its_id_after_restart(tmp_path):
    fake = FakeAgents()
    first = Cluster(tmp_path, fake=fake)
    await first.register(1)
    await first.post_app({"id": "/orphan", "cmd": "true", "cpus": 0.1, "mem": 16})
    (task,) = first.running("/orphan")
    await first.close()
    # As if the master died after deciding the launch and before sending it.
    store = SqliteStore(tmp_path)
    store.put("tasks", task.task_id, {**store.get("tasks", task.task_id), "launched_at": None,
                                      "state": "TASK_STAGING"})
    store.close()
    agent = fake.agent("agent-1")
    agent.tasks.clear()
    agent.launches.clear()
    agent.launched.clear()
    second = Cluster(tmp_path, fake=fake)
    try:
        await second.mesos.post("/v1/agents", json=registration(1))
        await second.settle()
        # Launches are idempotent by task id: the one decided is sent, not replaced by another.
        (running,) = second.running("/orphan")
        assert running.task_id == task.task_id
        assert [launch.task_id for launch in agent.launches] == [task.task_id]
    finally:
        await second.close()


def test_named_vip_labels_and_address_reuse():
    from cluster.vip_labels import named_vip
    from control.vips import VipAllocator

    assert named_vip("VIP_0", "/shop/web:80") == "/shop/web"
    assert named_vip("vip_1", "db:5432") == "/db"
    assert named_vip("VIP_0", "1.2.3.4:80") is None        # an IP VIP needs no allocation
    assert named_vip("HAPROXY_GROUP", "/x:80") is None
    assert named_vip("VIP_0", "garbage") is None
    assert named_vip("VIP_0", "/web:99999") is None         # agents would skip it: no address spent
    vips = VipAllocator()
    assert vips.sync(["/a", "/b"]) and vips.allocations == {"marathon:/a": "11.0.0.1", "marathon:/b": "11.0.0.2"}
    assert not vips.sync(["/a", "/b"])                      # idempotent
    vips.sync(["/b", "/c"])
    # /a's address is not handed to /c at once: agents may still hold the old mapping.
    assert vips.allocations == {"marathon:/b": "11.0.0.2", "marathon:/c": "11.0.0.3"}
    again = VipAllocator(vips.allocations, next_address=vips.next_address)
    again.sync(["/b", "/c", "/d"])
    assert again.allocations["marathon:/d"] == "11.0.0.4"
