"""The scheduler: placement (resources, ports, constraints), backoff, rolling upgrades, kills,
unreachable agents and reconciliation — over the real DRF allocator and fake agents."""

from collections import Counter

import pytest

from control.marathon_models import parse_app
from control.placement import AgentSlot, constraint_violation, network_shortfall
from tests.unit.master_harness import Cluster, registration


@pytest.fixture
async def cluster():
    c = Cluster()
    await c.register(1, rack="r1")
    await c.register(2, rack="r1")
    await c.register(3, rack="r2")
    yield c
    await c.close()


def hosts(cluster, app_id):
    return Counter(t.agent_id for t in cluster.running(app_id))


async def test_unique_hostname_spreads_and_the_rest_waits(cluster):
    await cluster.post_app({"id": "/u", "cmd": "true", "cpus": 0.1, "mem": 16, "instances": 4,
                            "constraints": [["hostname", "UNIQUE"]]})
    assert sorted(hosts(cluster, "/u").values()) == [1, 1, 1]
    entry = cluster.scheduler.queue.entries["/u"]
    assert entry.count == 1 and "UNIQUE" in entry.detail


@pytest.mark.parametrize("constraint, expect", [
    (["rack", "CLUSTER", "r2"], {"agent-3": 3}),
    (["hostname", "LIKE", "agent-[12]"], None),
    (["hostname", "UNLIKE", "agent-[12]"], {"agent-3": 3}),
    (["rack", "GROUP_BY"], None),
    (["hostname", "MAX_PER", "1"], {"agent-1": 1, "agent-2": 1, "agent-3": 1}),
])
async def test_constraints(cluster, constraint, expect):
    await cluster.post_app({"id": "/c", "cmd": "true", "cpus": 0.1, "mem": 16, "instances": 3,
                            "constraints": [constraint]})
    placed = hosts(cluster, "/c")
    if constraint[1] == "LIKE":
        assert set(placed) <= {"agent-1", "agent-2"} and sum(placed.values()) == 3
    elif constraint[1] == "GROUP_BY":
        racks = Counter("r2" if t.agent_id == "agent-3" else "r1" for t in cluster.running("/c"))
        assert sorted(racks.values()) == [1, 2]
    else:
        assert dict(placed) == expect


def test_group_by_balances_values():
    slots = [AgentSlot(f"a{i}", f"a{i}", {"zone": z}, []) for i, z in enumerate("xxy")]
    placed = [slots[0]]           # one task in zone x
    assert constraint_violation([["zone", "GROUP_BY"]], slots[1], placed, slots) is not None
    assert constraint_violation([["zone", "GROUP_BY"]], slots[2], placed, slots) is None


async def test_resources_bound_placement_and_free_on_kill(cluster):
    # 2 cpus per agent, 3 agents: 6 tasks of 1 cpu fit, the 7th waits.
    await cluster.post_app({"id": "/r", "cmd": "true", "cpus": 1, "mem": 16, "instances": 7})
    assert len(cluster.running("/r")) == 6
    entry = cluster.scheduler.queue.entries["/r"]
    assert entry.count == 1 and "needs cpus 1, 0 free" in entry.detail
    await cluster.marathon.put("/v2/apps/r", params={"force": "true"}, json={"instances": 5})
    await cluster.settle()
    assert len(cluster.running("/r")) == 5 and "/r" not in cluster.scheduler.queue.entries
    assert cluster.master.allocator.allocation("marathon")["cpus"] == pytest.approx(5)


async def test_host_ports_dynamic_fixed_and_require_ports(cluster):
    await cluster.post_app({"id": "/fixed", "cmd": "true", "cpus": 0.1, "mem": 16, "instances": 4,
                            "requirePorts": True, "portDefinitions": [{"port": 31050}]})
    assert [t.host_ports for t in cluster.running("/fixed")] == [[31050]] * 3
    assert cluster.scheduler.queue.entries["/fixed"].reasons.get("InsufficientPorts")
    await cluster.post_app({"id": "/p", "cmd": "true", "cpus": 0.1, "mem": 16, "instances": 3,
                            "portDefinitions": [{"port": 0}, {"port": 0, "name": "admin"}]})
    for task in cluster.running("/p"):
        assert len(set(task.host_ports)) == 2 and all(31000 <= p <= 31100 and p != 31050 for p in task.host_ports)
    # BRIDGE hostPort N is a fixed port too; outside every agent's range it cannot be placed.
    await cluster.post_app({"id": "/out", "instances": 1, "cpus": 0.1, "mem": 16, "container": {
        "type": "DOCKER", "docker": {"image": "nginx", "network": "BRIDGE",
                                     "portMappings": [{"containerPort": 80, "hostPort": 8080}]}}})
    assert cluster.running("/out") == [] and "host ports" in cluster.scheduler.queue.entries["/out"].detail


async def test_failed_tasks_restart_with_backoff(cluster):
    await cluster.post_app({"id": "/crash", "cmd": "false", "cpus": 0.1, "mem": 16,
                            "backoffSeconds": 10, "backoffFactor": 2, "maxLaunchDelaySeconds": 25})
    delays = []
    for _ in range(3):
        task = cluster.running("/crash")[0]
        await cluster.fake.report(task.agent_id, task.task_id, "TASK_FAILED", message="exit 1")
        await cluster.settle()
        assert cluster.running("/crash") == []
        delays.append(round(cluster.scheduler.queue.delay_left("/crash")))
        queue = (await cluster.marathon.get("/v2/queue")).json()["queue"]
        assert queue[0]["delay"]["timeLeftSeconds"] == delays[-1]
        cluster.clock.advance(delays[-1] + 0.1)
        await cluster.settle()
        assert len(cluster.running("/crash")) == 1
    assert delays == [10, 20, 25]
    app = (await cluster.marathon.get("/v2/apps/crash")).json()["app"]
    assert app["lastTaskFailure"]["state"] == "TASK_FAILED"


async def test_queue_says_why_a_task_failed(cluster):
    """E.g. an agent's m-dcos /25 is full: the task fails with that reason and the app waits in
    the queue saying so, instead of an address being handed out twice."""
    await cluster.post_app({"id": "/overlay", "cmd": "sleep 100", "cpus": 0.1, "mem": 16,
                            "ipAddress": {"networkName": "dcos"}})
    task = cluster.running("/overlay")[0]
    reason = "m-dcos 9.0.1.0/25 has no free address"
    await cluster.fake.report(task.agent_id, task.task_id, "TASK_FAILED", message=reason)
    await cluster.settle()
    queue = (await cluster.marathon.get("/v2/queue")).json()["queue"]
    assert reason in queue[0]["processedOffersSummary"]["reason"]


async def test_rolling_upgrade_keeps_health_capacity(cluster):
    cluster.fake.healthy = True
    await cluster.post_app({"id": "/roll", "cmd": "v1", "cpus": 0.1, "mem": 16, "instances": 4,
                            "healthChecks": [{"protocol": "TCP"}],
                            "upgradeStrategy": {"minimumHealthCapacity": 0.5, "maximumOverCapacity": 0}})
    old = {t.task_id for t in cluster.running("/roll")}
    cluster.fake.auto_run = False   # new tasks stay staging until we say so
    await cluster.marathon.put("/v2/apps/roll", json={"cmd": "v2"})
    await cluster.settle(1)
    live = [t for t in cluster.scheduler.app_tasks("/roll") if not t.kill_requested]
    ready_old = [t for t in live if t.task_id in old and t.ready]
    assert len(ready_old) == 2            # 50 % kept serving
    assert len(live) <= 4                 # never over capacity
    for _ in range(6):
        for agent in cluster.fake.agents.values():
            for task_id, status in list(agent.tasks.items()):
                if status.state == "TASK_STAGING":
                    await cluster.fake.report(agent.agent_id, task_id, "TASK_RUNNING", healthy=True)
        await cluster.settle(1)
    final = {t.task_id for t in cluster.running("/roll")}
    assert len(final) == 4 and not (final & old)
    assert cluster.scheduler.deployments.all() == []


async def agent_goes_quiet(cluster, agent_id: str) -> None:
    """The agent stops answering and its timeout passes: the master marks it unreachable."""
    cluster.fake.agent(agent_id).up = False
    cluster.clock.advance(10)
    await cluster.master.ping_agents()
    assert agent_id in cluster.master.check_agents()
    await cluster.settle()


async def test_unreachable_agent_tasks_are_replaced_and_returning_tasks_killed(cluster):
    await cluster.post_app({"id": "/ha", "cmd": "true", "cpus": 0.1, "mem": 16, "instances": 2,
                            "constraints": [["hostname", "UNIQUE"]],
                            "unreachableStrategy": {"inactiveAfterSeconds": 0, "expungeAfterSeconds": 0}})
    victim = cluster.running("/ha")[0]
    await agent_goes_quiet(cluster, victim.agent_id)
    running = cluster.running("/ha")
    assert len(running) == 2 and victim.agent_id not in {t.agent_id for t in running}
    view = (await cluster.mesos.get("/v1/view")).json()
    assert not next(a for a in view["agents"] if a["agent_id"] == victim.agent_id)["reachable"]
    # The agent comes back still running the old task: the master kills it (it was replaced).
    cluster.fake.agent(victim.agent_id).up = True
    await cluster.master.ping_agents()
    await cluster.settle()
    assert victim.task_id in cluster.fake.kills
    assert len(cluster.running("/ha")) == 2


async def test_agent_reporting_unknown_task_gets_it_killed_and_garbage_is_rejected(cluster):
    await cluster.fake.report("agent-1", "ghost.123", "TASK_RUNNING")
    cluster.fake.agent("agent-1").tasks["ghost.123"]    # the fake runs it
    await cluster.settle()
    assert "ghost.123" in cluster.fake.kills
    before = dict(cluster.scheduler.tasks)
    garbage = await cluster.mesos.post("/v1/agents/agent-1/status", json={"task_id": 5, "state": "TASK_EXPLODED"})
    assert garbage.status_code == 422
    not_json = await cluster.mesos.post("/v1/agents/agent-1/status", content=b"\x00\xff")
    assert not_json.status_code == 400
    stranger = await cluster.mesos.post("/v1/agents/nobody/status",
                                        json={"task_id": "x", "state": "TASK_RUNNING", "timestamp": 1})
    assert stranger.status_code == 404
    assert cluster.scheduler.tasks == before
    assert "navstar_master_rejected_agent_messages_total 2.0" in (await cluster.marathon.get("/metrics")).text


async def test_rejected_launch_is_task_error_with_backoff(cluster):
    for agent in ("agent-1", "agent-2", "agent-3"):
        cluster.fake.agent(agent).reject_images.add("nginx")
    await cluster.post_app({"id": "/img", "cpus": 0.1, "mem": 16,
                            "container": {"type": "DOCKER", "docker": {"image": "nginx", "network": "HOST"}}})
    assert cluster.running("/img") == []
    failure = cluster.scheduler.queue.last_failure["/img"]
    assert failure["state"] == "TASK_ERROR" and "nginx" in failure["message"]
    assert cluster.scheduler.queue.delay_left("/img") > 0


async def test_contended_roles_get_equal_dominant_shares_by_drf():
    # Six agents of <1 cpu, 1024 MB>: each holds one task of either app, and both apps want ten.
    # /a (role dev) is cpu-heavy, /b (role *) memory-heavy: each task is 1/6 of its dominant
    # resource, so DRF gives each role three agents — a scheduler serving one role first gives
    # one of them all six.
    cluster = Cluster()
    try:
        for index in range(1, 7):
            await cluster.register(index, cpus=1, mem=1024)
        for app in ({"id": "/a", "cmd": "true", "cpus": 1, "mem": 16, "instances": 10, "role": "dev"},
                    {"id": "/b", "cmd": "true", "cpus": 0.1, "mem": 1024, "instances": 10}):
            assert (await cluster.marathon.post("/v2/apps", json=app)).status_code == 201
        await cluster.settle(8)
        assert (len(cluster.running("/a")), len(cluster.running("/b"))) == (3, 3)
        assert {t.role for t in cluster.running("/a")} == {"dev"} and {t.role for t in cluster.running("/b")} == {"*"}
        allocator = cluster.master.allocator
        assert allocator.allocation("marathon-dev")["cpus"] == pytest.approx(3)       # 3 of 6 cpus
        assert allocator.allocation("marathon")["mem"] == pytest.approx(3 * 1024)      # 3 of 6 GB
        assert allocator.shares() == {"marathon-dev": pytest.approx(0.5), "marathon": pytest.approx(0.5)}
        assert cluster.scheduler.queue.entries["/a"].count == 7 and cluster.scheduler.queue.entries["/b"].count == 7
        state = (await cluster.mesos.get("/master/state")).json()
        assert set(state["frameworks"][0]["roles"]) >= {"*", "dev"}
    finally:
        await cluster.close()


async def test_kill_task_with_scale(cluster):
    await cluster.post_app({"id": "/k", "cmd": "true", "cpus": 0.1, "mem": 16, "instances": 2})
    task = cluster.running("/k")[0]
    resp = await cluster.marathon.delete(f"/v2/apps/k/tasks/{task.task_id}", params={"scale": "true"})
    assert resp.status_code == 200
    await cluster.settle()
    assert len(cluster.running("/k")) == 1 and cluster.scheduler.apps["/k"].instances == 1


async def test_task_not_running_after_launch_timeout_is_replaced(cluster):
    cluster.fake.auto_run = False
    await cluster.post_app({"id": "/stuck", "cmd": "true", "cpus": 0.1, "mem": 16})
    (stuck,) = cluster.scheduler.app_tasks("/stuck")
    cluster.clock.advance(301)
    cluster.fake.auto_run = True
    await cluster.settle()
    assert stuck.task_id in cluster.fake.kills
    (replacement,) = cluster.running("/stuck")
    assert replacement.task_id != stuck.task_id


async def test_hierarchical_roles_and_bad_roles(cluster):
    await cluster.post_app({"id": "/h", "cmd": "true", "cpus": 0.5, "mem": 16, "role": "eng/web"})
    assert len(cluster.running("/h")) == 1
    assert cluster.master.allocator.allocation("marathon-eng|web")["cpus"] == pytest.approx(0.5)
    for bad in ("a b", "-x", "a//b", "../x"):
        resp = await cluster.marathon.post("/v2/apps", json={"id": "/bad", "cmd": "true", "role": bad})
        assert resp.status_code == 422 and resp.json()["details"][0]["path"] == "/role", bad


async def test_restart_with_unique_hostname_on_every_agent_still_completes(cluster):
    await cluster.post_app({"id": "/u3", "cmd": "true", "cpus": 0.1, "mem": 16, "instances": 3,
                            "constraints": [["hostname", "UNIQUE"]]})
    old = {t.task_id for t in cluster.running("/u3")}
    assert len(old) == 3
    assert (await cluster.marathon.post("/v2/apps/u3/restart")).status_code == 200
    for _ in range(6):
        await cluster.settle(2)
        running = cluster.running("/u3")
        assert len(running) >= 2          # one at a time: never more than one instance down
    final = {t.task_id for t in cluster.running("/u3")}
    assert len(final) == 3 and not (final & old)
    assert cluster.scheduler.deployments.all() == []


async def test_unreachable_within_inactive_after_keeps_the_task(cluster):
    await cluster.post_app({"id": "/patient", "cmd": "true", "cpus": 0.1, "mem": 16,
                            "unreachableStrategy": {"inactiveAfterSeconds": 60, "expungeAfterSeconds": 120}})
    (task,) = cluster.running("/patient")
    await agent_goes_quiet(cluster, task.agent_id)
    assert task.state == "TASK_UNREACHABLE" and cluster.running("/patient") == []
    assert len(cluster.scheduler.app_tasks("/patient")) == 1          # not replaced yet
    cluster.fake.agent(task.agent_id).up = True
    await cluster.master.ping_agents()                               # back: reconciled
    await cluster.settle()
    assert [t.task_id for t in cluster.running("/patient")] == [task.task_id]
    assert cluster.fake.kills == []
    assert cluster.master.allocator.allocation("marathon")["cpus"] == pytest.approx(0.1)


async def test_by_default_an_unreachable_task_is_replaced_after_five_minutes_as_marathon_does(cluster):
    await cluster.post_app({"id": "/default", "cmd": "true", "cpus": 0.1, "mem": 16})
    (task,) = cluster.running("/default")
    await agent_goes_quiet(cluster, task.agent_id)
    assert task.state == "TASK_UNREACHABLE" and len(cluster.scheduler.app_tasks("/default")) == 1
    cluster.clock.advance(299)
    await cluster.settle()
    assert len(cluster.scheduler.app_tasks("/default")) == 1          # 299 s since it was marked: waited for
    cluster.clock.advance(2)
    await cluster.settle()
    (replacement,) = cluster.running("/default")
    assert replacement.task_id != task.task_id and replacement.agent_id != task.agent_id


async def test_a_disabled_unreachable_strategy_waits_for_the_agent_forever(cluster):
    created = await cluster.post_app({"id": "/resident", "cmd": "true", "cpus": 0.1, "mem": 16,
                                      "unreachableStrategy": "disabled"})
    assert created.json()["unreachableStrategy"] == "disabled"
    (task,) = cluster.running("/resident")
    await agent_goes_quiet(cluster, task.agent_id)
    cluster.clock.advance(3600)
    await cluster.settle()
    assert [t.task_id for t in cluster.scheduler.app_tasks("/resident")] == [task.task_id]
    assert task.state == "TASK_UNREACHABLE"


# -- container networks (issue 23): tasks go only where their CNI network is -----------------
async def register_with_networks(cluster: Cluster, index: int, networks: list[str] | None) -> None:
    resp = await cluster.mesos.post("/v1/agents", json={**registration(index), "networks": networks})
    assert resp.status_code == 200, resp.text
    await cluster.settle(1)


async def test_app_on_a_network_only_one_agent_has_runs_only_there():
    cluster = Cluster()
    try:
        await register_with_networks(cluster, 1, ["dcos", "dcos-docker"])
        await register_with_networks(cluster, 2, ["dcos", "dcos-docker", "lab-net"])
        await cluster.post_app({"id": "/labnet", "cmd": "sleep 100", "cpus": 0.1, "mem": 16, "instances": 3,
                                "ipAddress": {"networkName": "lab-net"}})
        assert {t.agent_id for t in cluster.running("/labnet")} == {"agent-2"}
        assert len(cluster.running("/labnet")) == 3
        await cluster.post_app({"id": "/mesh", "cmd": "sleep 100", "cpus": 0.1, "mem": 16, "instances": 1,
                                "container": {"type": "DOCKER", "docker": {"image": "nginx", "network": "USER"}},
                                "ipAddress": {"networkName": "weave"}})
        queue = (await cluster.marathon.get("/v2/queue")).json()["queue"]
        (entry,) = [q for q in queue if q["app"]["id"] == "/mesh"]
        summary = entry["processedOffersSummary"]
        assert {r["reason"] for r in summary["rejectSummaryLastOffers"]} == {"UnavailableNetwork"}
        assert "agent-1: no container network 'weave' (has: dcos, dcos-docker)" in summary["reason"]
        assert "agent-2: no container network 'weave' (has: dcos, dcos-docker, lab-net)" in summary["reason"]
        view = (await cluster.mesos.get("/v1/view")).json()
        assert {a["agent_id"]: a["networks"] for a in view["agents"]}["agent-2"] == ["dcos", "dcos-docker", "lab-net"]
        # The network appears on an agent (it registers again with it): the task goes there.
        await register_with_networks(cluster, 1, ["dcos", "dcos-docker", "weave"])
        await cluster.settle()
        assert [t.agent_id for t in cluster.running("/mesh")] == ["agent-1"]
    finally:
        await cluster.close()


async def test_agents_that_report_no_networks_take_any_network(cluster):
    await cluster.post_app({"id": "/old", "cmd": "sleep 100", "cpus": 0.1, "mem": 16,
                            "ipAddress": {"networkName": "dcos"}})
    assert len(cluster.running("/old")) == 1
    view = (await cluster.mesos.get("/v1/view")).json()
    assert all(a["networks"] is None for a in view["agents"])


def test_network_shortfall_names_the_agents_networks():
    app = parse_app({"id": "/a", "cmd": "x", "networks": [{"mode": "container", "name": "lab-net"}]})
    slot = AgentSlot("agent-1", "agent-1", {}, [], networks=frozenset({"dcos"}))
    assert network_shortfall(app, slot) == "no container network 'lab-net' (has: dcos)"
    assert network_shortfall(app, AgentSlot("agent-2", "agent-2", {}, [])) is None
    assert network_shortfall(parse_app({"id": "/h", "cmd": "x"}), slot) is None
