"""The Mesos v1 scheduler API on the master harness: calls and events, bad input, DRF between
frameworks with weights, failover, missed heartbeats — over the real allocator and fake agents."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from control.frameworks import MISSED_HEARTBEATS, CallRefused, Framework, Subscription
from control.mesos_v1 import parse_call
from spartan_dns.records import generate
from spartan_dns.view_state import state_of_view
from tests.unit.master_harness import Cluster


class Sched:
    """A scheduler on the harness: subscribed through the domain (ASGI cannot stream), every
    other call over HTTP with its Mesos-Stream-Id, as a client sends it."""

    def __init__(self, cluster: Cluster, name: str, role: str = "*", failover: float = 0.0,
                 framework_id: str | None = None, capabilities: tuple[str, ...] = ()) -> None:
        info: dict[str, Any] = {"user": "nobody", "name": name, "roles": [role], "failover_timeout": failover,
                                "capabilities": [{"type": c} for c in capabilities]}
        call: dict[str, Any] = {"type": "SUBSCRIBE", "subscribe": {"framework_info": info}}
        if framework_id:
            call["framework_id"] = {"value": framework_id}
            info["id"] = {"value": framework_id}
        self.cluster = cluster
        self.framework: Framework
        self.subscription: Subscription
        self.framework, self.subscription = cluster.master.frameworks.subscribe(parse_call(call), "198.18.0.11")
        self.id = self.framework.framework_id
        self.events: list[dict[str, Any]] = []
        self.offers: dict[str, dict[str, Any]] = {}
        self.drain()

    def drain(self) -> list[dict[str, Any]]:
        new = []
        while not self.subscription.queue.empty():
            event = self.subscription.queue.get_nowait()
            if event is None:
                break
            new.append(event)
            if event["type"] == "OFFERS":
                for offer in event["offers"]["offers"]:
                    self.offers[offer["id"]["value"]] = offer
            elif event["type"] == "RESCIND":
                self.offers.pop(event["rescind"]["offer_id"]["value"], None)
        self.subscription.delivered(self.cluster.clock())
        self.events += new
        return new

    def updates(self, task_id: str | None = None) -> list[dict[str, Any]]:
        return [e["update"]["status"] for e in self.events if e["type"] == "UPDATE"
                and (task_id is None or e["update"]["status"]["task_id"]["value"] == task_id)]

    async def call(self, kind: str, body: dict[str, Any] | None = None, stream_id: str | None = "mine"):
        message: dict[str, Any] = {"type": kind, "framework_id": {"value": self.id}}
        if body is not None:
            message[kind.lower()] = body
        headers = {} if stream_id is None else {
            "Mesos-Stream-Id": self.subscription.stream_id if stream_id == "mine" else stream_id}
        resp = await self.cluster.mesos.post("/api/v1/scheduler", json=message, headers=headers)
        self.drain()
        return resp

    async def launch(self, offer_id: str, *tasks: dict[str, Any], refuse: float | None = None):
        body: dict[str, Any] = {"offer_ids": [{"value": offer_id}],
                                "operations": [{"type": "LAUNCH", "launch": {"task_infos": list(tasks)}}]}
        if refuse is not None:
            body["filters"] = {"refuse_seconds": refuse}
        self.offers.pop(offer_id, None)
        return await self.call("ACCEPT", body)


def task_info(task_id: str, agent_id: str, cpus: float = 0.5, mem: float = 64, ports: list[int] | None = None,
              cmd: str = "sleep 60") -> dict[str, Any]:
    resources: list[dict[str, Any]] = [
        {"name": "cpus", "type": "SCALAR", "scalar": {"value": cpus}},
        {"name": "mem", "type": "SCALAR", "scalar": {"value": mem}}]
    if ports:
        resources.append({"name": "ports", "type": "RANGES",
                          "ranges": {"range": [{"begin": p, "end": p} for p in ports]}})
    return {"name": task_id.split("-")[0], "task_id": {"value": task_id}, "agent_id": {"value": agent_id},
            "resources": resources, "command": {"value": cmd}}


def scalar(offer: dict[str, Any], name: str) -> float:
    return next((r["scalar"]["value"] for r in offer["resources"] if r["name"] == name), 0.0)


@pytest.fixture
async def cluster():
    c = Cluster()
    for index in (1, 2, 3):
        await c.register(index)
    yield c
    await c.close()


def advance(cluster: Cluster, seconds: float, *reading: Sched) -> None:
    """Time passes; the ``reading`` schedulers keep reading their streams (heartbeats)."""
    cluster.clock.advance(seconds)
    for sched in reading:
        sched.subscription.delivered(cluster.clock())
    cluster.master.frameworks.tick()
    for sched in reading:
        sched.drain()


async def settle(cluster: Cluster, *scheds: Sched, rounds: int = 2) -> None:
    for _ in range(rounds):
        await cluster.settle(1)
        await cluster.master.frameworks.settle()
        for sched in scheds:
            sched.drain()


async def test_subscribe_offers_launch_running_finished_acknowledged(cluster):
    sched = Sched(cluster, "hello")
    subscribed = sched.events[0]
    assert subscribed["type"] == "SUBSCRIBED"
    assert subscribed["subscribed"]["framework_id"]["value"] == sched.id
    assert subscribed["subscribed"]["heartbeat_interval_seconds"] == 15.0
    await settle(cluster, sched)
    assert {o["agent_id"]["value"] for o in sched.offers.values()} == {"agent-1", "agent-2", "agent-3"}
    offer_id, offer = next(iter(sched.offers.items()))
    assert scalar(offer, "cpus") == 2 and scalar(offer, "mem") == 1024
    ports = next(r for r in offer["resources"] if r["name"] == "ports")["ranges"]["range"]
    assert ports == [{"begin": 31000, "end": 31100}]
    agent = offer["agent_id"]["value"]
    resp = await sched.launch(offer_id, task_info("t1", agent, ports=[31005]), refuse=0)
    assert resp.status_code == 202, resp.text
    await settle(cluster, sched)
    running = sched.updates("t1")
    assert [s["state"] for s in running] == ["TASK_RUNNING"] and running[0]["uuid"]
    launched = cluster.fake.agent(agent).launches[-1]
    assert launched.cmd == "sleep 60" and launched.cpus == 0.5 and [p.host_port for p in launched.ports] == [31005]
    # The task is in /master/state under its framework, and in the view under its name.
    state = (await cluster.mesos.get("/master/state")).json()
    mine = next(f for f in state["frameworks"] if f["id"] == sched.id)
    assert [t["id"] for t in mine["tasks"]] == ["t1"] and mine["tasks"][0]["name"] == "t1"
    assert any(t.task_id == "t1" and t.framework == "hello" for t in cluster.master.view().tasks)
    records = {(r.name, r.rtype): r.value for r in generate(state_of_view(cluster.master.view())).records}
    assert records[("t1.hello.mesos.", "A")] == "198.18.0.1" + agent[-1]     # the agent's address
    assert records[("hello.mesos.", "A")] == "198.18.0.11"                    # where the scheduler called from
    assert ("_framework._tcp.hello.mesos.", "SRV") not in records               # it listens nowhere
    listed = (await cluster.mesos.get("/master/frameworks")).json()
    assert sched.id in [f["id"] for f in listed["frameworks"]]
    # The update is resent until acknowledged.
    advance(cluster, 6, sched)
    assert len(sched.updates("t1")) == 2
    ack = await sched.call("ACKNOWLEDGE", {"agent_id": {"value": agent}, "task_id": {"value": "t1"},
                                           "uuid": running[0]["uuid"]})
    assert ack.status_code == 202
    advance(cluster, 60, sched)
    assert len(sched.updates("t1")) == 2
    # The task finishes: TASK_FINISHED, its resources return.
    await cluster.fake.report(agent, "t1", "TASK_FINISHED")
    sched.drain()
    assert sched.updates("t1")[-1]["state"] == "TASK_FINISHED"
    assert cluster.master.allocator.free(agent)["cpus"] + cluster.master.allocator.allocation(sched.id).get(
        "cpus", 0) >= 2 - 1e-9
    assert "t1" not in sched.framework.tasks
    assert cluster.master.frameworks.completed_tasks[-1].task_id == "t1"


async def test_bad_calls_answer_400_with_mesos_sentences(cluster):
    sched = Sched(cluster, "bad")
    resp = await sched.call("REVIVE", stream_id=None)
    assert resp.status_code == 400
    assert resp.text == "All non-subscribe calls should include the 'Mesos-Stream-Id' header"
    resp = await sched.call("REVIVE", stream_id="0000")
    assert resp.status_code == 400 and resp.text.startswith("The stream ID '0000' included in this request didn't")
    resp = await cluster.mesos.post("/api/v1/scheduler", content=b"{nope",
                                    headers={"Content-Type": "application/json"})
    assert resp.status_code == 400 and resp.text.startswith("Failed to parse body into JSON")
    resp = await cluster.mesos.post("/api/v1/scheduler", json={"type": "FLY"})
    assert resp.status_code == 400 and resp.text.startswith("Failed to validate scheduler::Call: Expecting 'type'")
    resp = await cluster.mesos.post("/api/v1/scheduler", json={"type": "REVIVE"})
    assert resp.status_code == 400 and "framework_id" in resp.text
    resp = await cluster.mesos.post("/api/v1/scheduler", json={"type": "REVIVE", "framework_id": {"value": "x"}},
                                    headers={"Mesos-Stream-Id": sched.subscription.stream_id})
    assert resp.status_code == 400 and resp.text == "Framework cannot be found"
    resp = await cluster.mesos.post("/api/v1/scheduler", json={"type": "SUBSCRIBE", "subscribe": {
        "framework_info": {"user": "u", "name": "n"}}}, headers={"Mesos-Stream-Id": "x"})
    assert resp.status_code == 400 and "should not include the 'Mesos-Stream-Id'" in resp.text
    resp = await cluster.mesos.post("/api/v1/scheduler", json={"type": "SUBSCRIBE", "framework_id": {"value": "a/b"},
                                                               "subscribe": {"framework_info": {"user": "u", "name": "n"}}})
    assert resp.status_code == 400 and "Framework id 'a/b' is invalid" in resp.text
    resp = await cluster.mesos.post("/api/v1/scheduler", json={"type": "SUBSCRIBE", "subscribe": {
        "framework_info": {"user": "u", "name": "n", "roles": ["a", "b"]}}})
    assert resp.status_code == 400 and "one role" in resp.text
    resp = await sched.call("ACCEPT", {"offer_ids": [], "filters": {"refuse_seconds": -1}})
    assert resp.status_code == 400 and "refuse_seconds" in resp.text
    # Still serving: a good call goes through; the refusals are counted.
    assert (await sched.call("SUPPRESS")).status_code == 202
    metrics = (await cluster.mesos.get("/metrics")).text
    assert "navstar_master_scheduler_calls_refused_total 10.0" in metrics
    assert 'navstar_master_frameworks{state="connected"} 1.0' in metrics


async def test_unknown_or_rescinded_offer_and_over_accept_end_tasks(cluster):
    sched = Sched(cluster, "greedy", capabilities=("PARTITION_AWARE",))
    await settle(cluster, sched)
    offer_id, offer = next(iter(sched.offers.items()))
    agent = offer["agent_id"]["value"]
    await sched.launch("no-such-offer", task_info("ghost", agent))
    dropped = sched.updates("ghost")
    assert dropped[-1]["state"] == "TASK_DROPPED" and dropped[-1]["reason"] == "REASON_INVALID_OFFERS"
    assert "uuid" not in dropped[-1]
    # Too much cpus, a port outside the offer, and a good one in the same accept.
    await sched.launch(offer_id, task_info("fat", agent, cpus=64), task_info("port", agent, ports=[80]),
                       task_info("ok", agent, cpus=1))
    assert sched.updates("fat")[-1]["state"] == "TASK_ERROR"
    assert "more resources (cpus:64) than available (cpus:2)" in sched.updates("fat")[-1]["message"]
    assert sched.updates("port")[-1]["state"] == "TASK_ERROR" and "not in the offer" in \
        sched.updates("port")[-1]["message"]
    await settle(cluster, sched)
    assert sched.updates("ok")[-1]["state"] == "TASK_RUNNING"
    assert set(sched.framework.tasks) == {"ok"}
    # The offer is answered now: accepting it again drops the task.
    await sched.launch(offer_id, task_info("again", agent))
    assert sched.updates("again")[-1]["state"] == "TASK_DROPPED"
    # A suppressed framework's offers are rescinded.
    await sched.call("SUPPRESS")
    assert any(e["type"] == "RESCIND" for e in sched.events)
    assert sched.offers == {}


async def test_decline_filters_revive_kill_reconcile_teardown(cluster):
    sched = Sched(cluster, "polite")
    await settle(cluster, sched)
    first = set(sched.offers)
    await sched.call("DECLINE", {"offer_ids": [{"value": o} for o in first], "filters": {"refuse_seconds": 300}})
    sched.offers.clear()
    await settle(cluster, sched)
    assert sched.offers == {}, "declined agents are filtered for refuse_seconds"
    await sched.call("REVIVE")
    await settle(cluster, sched)
    assert len(sched.offers) == 3
    offer_id, offer = next(iter(sched.offers.items()))
    agent = offer["agent_id"]["value"]
    await sched.launch(offer_id, task_info("k1", agent))
    await settle(cluster, sched)
    await sched.call("RECONCILE", {"tasks": [{"task_id": {"value": "k1"}}, {"task_id": {"value": "nope"}}]})
    states = {s["task_id"]["value"]: (s["state"], s.get("reason")) for s in sched.updates()[-2:]}
    assert states == {"k1": ("TASK_RUNNING", "REASON_RECONCILIATION"), "nope": ("TASK_LOST", "REASON_RECONCILIATION")}
    await sched.call("KILL", {"task_id": {"value": "k1"}, "agent_id": {"value": agent}})
    await settle(cluster, sched)
    assert sched.updates("k1")[-1]["state"] == "TASK_KILLED"
    await sched.launch(next(iter(sched.offers)), task_info("k2", next(iter(sched.offers.values()))["agent_id"]
                                                           ["value"]))
    await settle(cluster, sched)
    assert "k2" in sched.framework.tasks
    other = Sched(cluster, "bystander")
    assert (await cluster.mesos.post("/master/teardown", data={"frameworkId": "nope"})).status_code == 400
    assert (await cluster.mesos.post("/master/teardown", data={"frameworkId": other.id})).status_code == 200
    assert other.id not in cluster.master.frameworks.frameworks and other.subscription.closed
    await sched.call("TEARDOWN")
    await settle(cluster, sched)
    assert sched.id not in cluster.master.frameworks.frameworks
    with pytest.raises(CallRefused, match="Framework has been removed"):
        Sched(cluster, "polite", framework_id=sched.id)
    assert "k2" in cluster.fake.kills
    assert all(cluster.master.allocator.free(f"agent-{i}") == {"cpus": 2, "mem": 1024, "disk": 1000}
               for i in (1, 2, 3))


async def test_failover_within_timeout_keeps_tasks_and_after_it_loses_them(cluster):
    sched = Sched(cluster, "phoenix", failover=60)
    await settle(cluster, sched)
    offer_id, offer = next(iter(sched.offers.items()))
    await sched.launch(offer_id, task_info("p1", offer["agent_id"]["value"]))
    await settle(cluster, sched)
    framework_id = sched.id
    cluster.master.frameworks.stream_ended(sched.framework, sched.subscription)   # the scheduler dies
    cluster.clock.advance(30)
    cluster.master.frameworks.tick()
    again = Sched(cluster, "phoenix", failover=60, framework_id=framework_id)
    assert again.framework is sched.framework and "p1" in again.framework.tasks
    await again.call("RECONCILE", {"tasks": []})
    assert again.updates("p1")[-1]["state"] == "TASK_RUNNING"
    # Away for longer than the timeout: the tasks are killed, the framework is gone.
    cluster.master.frameworks.stream_ended(again.framework, again.subscription)
    cluster.clock.advance(59)
    cluster.master.frameworks.tick()
    assert framework_id in cluster.master.frameworks.frameworks
    cluster.clock.advance(2)
    cluster.master.frameworks.tick()
    await settle(cluster)
    assert framework_id not in cluster.master.frameworks.frameworks
    assert "p1" in cluster.fake.kills
    assert cluster.master.frameworks.framework_tasks() == []


async def test_missed_heartbeats_disconnect(cluster):
    sched = Sched(cluster, "deaf", failover=600)
    cluster.clock.advance(15 * MISSED_HEARTBEATS - 1)
    cluster.master.frameworks.tick()
    assert sched.framework.connected
    cluster.clock.advance(2)            # nothing read from the stream for MISSED_HEARTBEATS heartbeats
    cluster.master.frameworks.tick()
    assert not sched.framework.connected and sched.subscription.closed
    resp = await sched.call("REVIVE")
    assert resp.status_code == 403 and resp.text == "Framework is not subscribed"


async def test_restarted_master_keeps_frameworks_and_tasks(tmp_path):
    cluster = Cluster(state_dir=tmp_path)
    try:
        await cluster.register(1)
        sched = Sched(cluster, "durable", failover=300)
        await settle(cluster, sched)
        offer_id, offer = next(iter(sched.offers.items()))
        await sched.launch(offer_id, task_info("d1", "agent-1"))
        await settle(cluster, sched)
        framework_id = sched.id
    finally:
        await cluster.close()
    again = Cluster(state_dir=tmp_path, fake=cluster.fake)
    try:
        framework = again.master.frameworks.frameworks[framework_id]
        assert not framework.connected and "d1" in framework.tasks
        assert again.master.allocator.allocation(framework_id)["cpus"] == 0.5
        back = Sched(again, "durable", failover=300, framework_id=framework_id)
        await back.call("RECONCILE", {"tasks": []})
        assert back.updates("d1")[-1]["state"] == "TASK_RUNNING"
    finally:
        await again.close()


def dominant(cluster: Cluster, sched: Sched) -> float:
    """The framework's dominant share of what its tasks use (cpus here: 0.5 of 6, against 64 of 3072 MB)."""
    used = sum(t.resources.get("cpus", 0.0) for t in sched.framework.tasks.values() if not t.terminal)
    return used / 6


async def test_drf_weights_one_to_two_and_a_third_framework(cluster):
    """Two greedy frameworks, roles weighted 1 and 2, on 3 agents (6 cpus): each takes every
    offer with 0.5-cpu tasks; tasks finish in turn. Their dominant shares settle near 1:2; a
    third joining gets its share as tasks finish."""
    resp = await cluster.mesos.put("/weights", json=[{"role": "light", "weight": 1}, {"role": "heavy", "weight": 2}])
    assert resp.status_code == 200
    light, heavy = Sched(cluster, "light", role="light"), Sched(cluster, "heavy", role="heavy")
    scheds = [light, heavy]
    counter = 0

    async def greedy_round() -> None:
        nonlocal counter
        await settle(cluster, *scheds, rounds=1)
        for sched in scheds:
            for offer_id, offer in list(sched.offers.items()):
                cpus, mem = scalar(offer, "cpus"), scalar(offer, "mem")
                tasks = []
                while cpus >= 0.5 and mem >= 64:
                    counter += 1
                    tasks.append(task_info(f"{sched.framework.spec.name}-{counter}", offer["agent_id"]["value"]))
                    cpus, mem = cpus - 0.5, mem - 64
                if tasks:   # what is left over is refused for a while, as greedy Mesos frameworks do
                    await sched.launch(offer_id, *tasks, refuse=30)
                else:
                    del sched.offers[offer_id]
                    await sched.call("DECLINE", {"offer_ids": [{"value": offer_id}],
                                                 "filters": {"refuse_seconds": 30}})
        await settle(cluster, *scheds, rounds=1)

    async def finish_oldest(count: int) -> None:
        live = sorted((t for s in scheds for t in s.framework.tasks.values() if t.state == "TASK_RUNNING"),
                      key=lambda t: t.staged_at)
        for task in live[:count]:
            await cluster.fake.report(task.agent_id, task.task_id, "TASK_FINISHED")

    ratios = []
    for _ in range(40):
        await greedy_round()
        ratios.append(dominant(cluster, heavy) / max(dominant(cluster, light), 1e-9))
        cluster.clock.advance(1)
        await finish_oldest(2)
    settled = sum(ratios[-10:]) / 10
    assert abs(settled - 2.0) <= 0.2, ratios
    metrics = (await cluster.mesos.get("/metrics")).text
    assert 'navstar_master_dominant_share{framework="heavy"}' in metrics
    third = Sched(cluster, "third", role="heavy")
    scheds.append(third)
    thirds, role_ratios = [], []
    for _ in range(40):
        await greedy_round()
        thirds.append(dominant(cluster, third))
        role_ratios.append((dominant(cluster, heavy) + dominant(cluster, third)) / max(dominant(cluster, light), 1e-9))
        cluster.clock.advance(1)
        await finish_oldest(2)
    # The third framework shares the heavy role: it gets tasks as others finish, half the role's share.
    assert sum(thirds[-10:]) / 10 >= 0.25, thirds
    assert abs(sum(role_ratios[-10:]) / 10 - 2.0) <= 0.2, role_ratios


async def test_a_lost_agent_rescinds_its_offers_and_loses_its_tasks(cluster):
    sched = Sched(cluster, "mortal")
    await settle(cluster, sched)
    on_agent_1 = next(o for o, offer in sched.offers.items() if offer["agent_id"]["value"] == "agent-1")
    await sched.launch(on_agent_1, task_info("m1", "agent-1"), refuse=0)
    await settle(cluster, sched)
    assert sched.updates("m1")[-1]["state"] == "TASK_RUNNING"
    await sched.call("DECLINE", {"offer_ids": [{"value": o} for o in sched.offers], "filters": {"refuse_seconds": 0}})
    sched.offers.clear()
    await settle(cluster, sched)
    held = [o for o, offer in sched.offers.items() if offer["agent_id"]["value"] == "agent-1"]
    assert held, "agent-1's remaining resources are offered again"
    cluster.fake.agent("agent-1").up = False
    cluster.clock.advance(6)            # past the harness's agent_timeout of 5 s; the others are heard
    cluster.master.agent_heard("agent-2")
    cluster.master.agent_heard("agent-3")
    sched.subscription.delivered(cluster.clock())
    assert cluster.master.check_agents() == ["agent-1"]
    await cluster.master.frameworks.settle()
    sched.drain()
    lost = sched.updates("m1")[-1]
    assert lost["state"] == "TASK_LOST" and lost["reason"] == "REASON_AGENT_REMOVED"
    rescinded = {e["rescind"]["offer_id"]["value"] for e in sched.events if e["type"] == "RESCIND"}
    assert set(held) <= rescinded
    assert not any(offer["agent_id"]["value"] == "agent-1" for offer in sched.offers.values())


async def test_a_stopping_master_ends_every_stream(cluster):
    sched = Sched(cluster, "listener", failover=60)
    ticking = asyncio.ensure_future(cluster.master.frameworks.run(interval=0.01))
    await asyncio.sleep(0.05)
    ticking.cancel()
    await asyncio.gather(ticking, return_exceptions=True)
    assert sched.subscription.closed      # its stream ends (the face finishes the response)
    assert sched.id in cluster.master.frameworks.frameworks     # still registered: it re-subscribes elsewhere
