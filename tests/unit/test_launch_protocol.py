"""The launch protocol between the master and its agents, against fake agents with faults:
a lost launch answer, a late report, an unknown task, a busy agent, a burst larger than the
cluster, spread and batching. What a user would check: one task id per instance reached
TASK_RUNNING, nothing was killed that the master launched, nothing failed."""

import asyncio
from collections import Counter

import pytest

from control import scheduler as scheduler_module
from control.agent_client import FakeAgents
from tests.unit.master_harness import Cluster, registration


def one_task_app(index: int, cpus: float = 0.01) -> dict:
    return {"id": f"/burst-{index:03d}", "cmd": "sleep 1000", "cpus": cpus, "mem": 8,
            "portDefinitions": [{"port": 0, "labels": {"VIP_0": f"/burst-{index:03d}:80"}}]}


async def cluster_with(agents: int, fake: FakeAgents | None = None, **registration) -> Cluster:
    cluster = Cluster(fake=fake)
    for index in range(1, agents + 1):
        await cluster.register(index, **registration)
    return cluster


def launched_ids(fake: FakeAgents) -> Counter:
    """How often each task id was started by an agent (each id must be started once)."""
    return Counter(launch.task_id for agent in fake.agents.values() for launch in agent.launches)


def failures(cluster: Cluster) -> list:
    return [t for t in cluster.scheduler.completed if t.state in ("TASK_FAILED", "TASK_ERROR", "TASK_LOST")]


async def test_lost_launch_answer_keeps_the_task_staging_and_resends_it_under_its_id():
    fake = FakeAgents(auto_run=False)
    fake.lose_answers = True
    cluster = await cluster_with(1, fake)
    try:
        await cluster.post_app(one_task_app(1))
        (task,) = cluster.scheduler.app_tasks("/burst-001")
        assert task.state == "TASK_STAGING" and task.launched_at is None
        cluster.clock.advance(scheduler_module.LAUNCH_RESEND_SECONDS + 0.1)
        fake.lose_answers = False
        await cluster.settle()
        # Sent again with the same id: the agent knows it and does not start it twice.
        sent = [ids for _agent, ids in fake.batches if task.task_id in ids]
        assert len(sent) == 2
        assert launched_ids(fake) == {task.task_id: 1}
        assert cluster.scheduler.app_tasks("/burst-001") == [task] and task.launched_at is not None
        await fake.report("agent-1", task.task_id, "TASK_RUNNING")
        assert [t.task_id for t in cluster.running("/burst-001")] == [task.task_id]
        assert fake.kills == [] and failures(cluster) == []
    finally:
        await cluster.close()


async def test_late_report_after_lost_answers_is_the_same_task_and_nothing_is_killed():
    fake = FakeAgents()
    fake.lose_answers = True
    fake.hold_statuses = True          # the agent runs the tasks; its reports come late
    cluster = await cluster_with(2, fake)
    try:
        for index in range(6):
            await cluster.post_app(one_task_app(index))
        for _ in range(4):             # cycles pass, resends go out, no answer and no report comes
            cluster.clock.advance(scheduler_module.LAUNCH_RESEND_MAX_SECONDS)
            await cluster.settle()
        tasks = list(cluster.scheduler.tasks.values())
        assert len(tasks) == 6 and {t.state for t in tasks} == {"TASK_STAGING"}
        await fake.release_statuses()
        await cluster.settle()
        for index in range(6):
            assert [t.task_id for t in cluster.running(f"/burst-{index:03d}")] == \
                [t.task_id for t in tasks if t.app_id == f"/burst-{index:03d}"]
        assert set(launched_ids(fake).values()) == {1} and len(launched_ids(fake)) == 6
        assert fake.kills == [] and failures(cluster) == []
    finally:
        await cluster.close()


async def test_unknown_task_is_killed_only_after_reconciliation_confirms_it():
    cluster = await cluster_with(1)
    scheduler = cluster.scheduler
    try:
        await cluster.post_app(one_task_app(1))
        (mine,) = cluster.running("/burst-001")
        # A report alone kills nothing: the master asks the agent again first.
        outcome = await scheduler.on_status("agent-1", cluster.fake.agent("agent-1").tasks[mine.task_id]
                                            .model_copy(update={"task_id": "ghost.1"}))
        assert outcome == "unknown task: reconciling" and cluster.fake.kills == []
        await cluster.fake.report("agent-1", "ghost.1", "TASK_RUNNING")
        await scheduler.reconcile("agent-1")          # first seen before this round: confirmed
        await scheduler.settle()
        assert cluster.fake.kills == ["ghost.1"] and scheduler.unknown_killed == 1
        # One seen for the first time in a round is not killed by that round.
        cluster.fake.agent("agent-1").tasks["ghost.2"] = cluster.fake.agent("agent-1").tasks[mine.task_id] \
            .model_copy(update={"task_id": "ghost.2"})
        scheduler.orphan_confirm_seconds = 3600.0     # the confirming round does not come yet
        await scheduler.reconcile("agent-1")
        assert "ghost.2" not in cluster.fake.kills
        # A suspect that went away meanwhile is forgotten, never killed.
        del cluster.fake.agent("agent-1").tasks["ghost.2"]
        await scheduler.reconcile("agent-1")
        assert "ghost.2" not in cluster.fake.kills and not scheduler._suspects
        assert [t.task_id for t in cluster.running("/burst-001")] == [mine.task_id]
        for pending in list(scheduler._pending_io):
            pending.cancel()
    finally:
        await cluster.close()


async def test_task_in_flight_is_never_taken_for_unknown():
    fake = FakeAgents(auto_run=False)
    cluster = await cluster_with(1, fake)
    try:
        await cluster.post_app(one_task_app(1))
        (task,) = cluster.scheduler.app_tasks("/burst-001")
        # The agent reports it before the master saw it running (or even the launch answer).
        await fake.report("agent-1", task.task_id, "TASK_STARTING")
        await cluster.scheduler.reconcile("agent-1")
        await fake.report("agent-1", task.task_id, "TASK_RUNNING")
        await cluster.settle()
        assert fake.kills == [] and [t.task_id for t in cluster.running("/burst-001")] == [task.task_id]
    finally:
        await cluster.close()


async def test_busy_agent_is_back_pressure_not_failure():
    fake = FakeAgents()
    fake.capacity = 2
    cluster = await cluster_with(1, fake)
    try:
        for index in range(5):
            await cluster.post_app(one_task_app(index))
        tasks = list(cluster.scheduler.tasks.values())
        assert Counter(t.state for t in tasks) == {"TASK_RUNNING": 2, "TASK_STAGING": 3}
        fake.capacity = None
        cluster.clock.advance(scheduler_module.BUSY_RETRY_SECONDS + 0.1)
        await cluster.settle()
        assert Counter(t.state for t in cluster.scheduler.tasks.values()) == {"TASK_RUNNING": 5}
        assert {t.task_id for t in cluster.scheduler.tasks.values()} == {t.task_id for t in tasks}
        assert set(launched_ids(fake).values()) == {1} and failures(cluster) == []
    finally:
        await cluster.close()


async def test_burst_larger_than_the_cluster_waits_in_the_queue_with_its_reason():
    cluster = await cluster_with(2, cpus=0.5)
    try:
        for index in range(14):
            await cluster.post_app(one_task_app(index, cpus=0.1))
        await cluster.settle()
        running = [t for t in cluster.scheduler.tasks.values() if t.state == "TASK_RUNNING"]
        assert len(running) == 10 and len(cluster.scheduler.tasks) == 10
        queue = (await cluster.marathon.get("/v2/queue")).json()["queue"]
        assert len(queue) == 4
        for item in queue:
            summary = item["processedOffersSummary"]
            assert [r["reason"] for r in summary["rejectSummaryLastOffers"]] == ["InsufficientCpus"]
            assert "needs cpus 0.1, 0 free" in summary["reason"]
        assert cluster.fake.kills == [] and failures(cluster) == []
    finally:
        await cluster.close()


async def test_burst_spreads_over_every_agent_in_one_request_per_agent_per_cycle():
    fake = FakeAgents()
    cluster = await cluster_with(3, fake)
    try:
        posts = [cluster.marathon.post("/v2/apps", json=one_task_app(index)) for index in range(60)]
        for post in posts:
            assert (await post).status_code == 201
        await cluster.settle()
        per_agent = Counter(t.agent_id for t in cluster.scheduler.tasks.values() if t.state == "TASK_RUNNING")
        assert sum(per_agent.values()) == 60
        assert set(per_agent) == {"agent-1", "agent-2", "agent-3"} and max(per_agent.values()) <= 30
        assert len(fake.batches) <= 3 * 4       # one request per agent per cycle, not one per task
    finally:
        await cluster.close()


@pytest.mark.parametrize("answer_lost", [False, True])
async def test_kill_before_the_launch_is_answered_kills_the_one_task(answer_lost):
    fake = FakeAgents(auto_run=False)
    fake.lose_answers = answer_lost
    cluster = await cluster_with(1, fake)
    try:
        await cluster.post_app(one_task_app(1))
        (task,) = cluster.scheduler.app_tasks("/burst-001")
        await cluster.marathon.delete("/v2/apps/burst-001", params={"force": "true"})
        await cluster.settle()
        assert cluster.scheduler.tasks == {} and launched_ids(fake) == {task.task_id: 1}
    finally:
        await cluster.close()


async def test_statuses_arrive_in_batches_each_answered():
    fake = FakeAgents(auto_run=False)
    cluster = await cluster_with(1, fake)
    try:
        await cluster.post_app(one_task_app(1))
        (task,) = cluster.scheduler.app_tasks("/burst-001")
        batch = [{"task_id": task.task_id, "state": "TASK_STARTING", "timestamp": 1.0},
                 {"task_id": 7, "state": "TASK_EXPLODED"},
                 {"task_id": task.task_id, "state": "TASK_RUNNING", "timestamp": 2.0}]
        resp = await cluster.mesos.post("/v1/agents/agent-1/statuses", json=batch)
        assert resp.status_code == 200
        assert [r["result"] for r in resp.json()["results"]] == ["ok", "invalid", "ok"]
        assert [t.task_id for t in cluster.running("/burst-001")] == [task.task_id]
        assert (await cluster.mesos.post("/v1/agents/nobody/statuses", json=[])).status_code == 404
        assert (await cluster.mesos.post("/v1/agents/agent-1/statuses", json={"no": "list"})).status_code == 400
    finally:
        await cluster.close()


async def test_agent_restarted_before_starting_an_acknowledged_task_is_reconciled_once_it_answers():
    fake = FakeAgents(auto_run=False)
    cluster = await cluster_with(1, fake)
    scheduler = cluster.scheduler
    try:
        await cluster.post_app(one_task_app(1))
        (task,) = scheduler.app_tasks("/burst-001")
        assert task.launched_at is not None and task.state == "TASK_STAGING"
        # The agent restarts: its launch queue is gone, and it registers before its API answers.
        agent = fake.agent("agent-1")
        agent.tasks.clear(), agent.launches.clear(), agent.launched.clear()
        agent.up = False
        scheduler.reconcile_retry_seconds = 0.05
        assert (await cluster.mesos.post("/v1/agents", json=registration(1))).status_code == 200
        await asyncio.sleep(0.01)
        assert scheduler.app_tasks("/burst-001") == [task]      # nothing decided without an answer
        agent.up = True
        await cluster.settle()
        # Proven absent by the agent: lost, and replaced under a new id that the agent started once.
        lost = [t for t in scheduler.completed if t.task_id == task.task_id]
        assert [t.state for t in lost] == ["TASK_LOST"]
        (replacement,) = scheduler.app_tasks("/burst-001")
        assert replacement.task_id != task.task_id and launched_ids(fake) == {replacement.task_id: 1}
    finally:
        await cluster.close()
