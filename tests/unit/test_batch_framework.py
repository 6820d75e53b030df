"""The batch framework against a served master (fake agents): a 20-task job through its HTTP API
runs on offers, its results come back, and idle it holds no resources; bad job bodies get 422."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from batch.api import batch_app
from batch.framework import BatchFramework
from batch.recordio import RecordIOError, RecordReader
from tests.unit.master_harness import ServedMaster
from tests.waiting import wait_until_async


@pytest.fixture
def served():
    master = ServedMaster()
    yield master
    master.stop()


def test_recordio_reader_splits_records_across_chunks():
    reader = RecordReader()
    assert reader.feed(b'12\n{"type":"A"}1') == [{"type": "A"}]
    assert reader.feed(b'3\n{"type":"BB"}') == [{"type": "BB"}]
    with pytest.raises(RecordIOError):
        RecordReader().feed(b"x\n{}")


async def finish_running(served: ServedMaster) -> None:
    """The fake agents' running tasks exit 0 (as `true` would)."""
    for agent in list(served.fake.agents.values()):
        for task_id, status in list(agent.tasks.items()):
            if status.state == "TASK_RUNNING":
                await served.fake.report(agent.agent_id, task_id, "TASK_FINISHED", message="exited with status 0")


async def test_a_20_task_job_runs_and_idle_holds_nothing(served):
    framework = BatchFramework(served.mesos_url, "batch-test", role="batch", secret=ServedMaster.SECRET)
    runner = asyncio.ensure_future(framework.run())
    api = httpx.AsyncClient(transport=httpx.ASGITransport(batch_app(framework)), base_url="http://batch")
    master = served.master
    try:
        await wait_until_async(lambda: framework.connected and framework.suppressed, 10, message="subscribed, idle")
        await wait_until_async(lambda: master.allocator.allocation(framework.framework_id) == {}, 10,
                               message="idle, the framework holds nothing")
        bad = await api.post("/v1/jobs", json={"cmd": "", "parallel": 0, "color": "red"})
        assert bad.status_code == 422
        assert {d["path"] for d in bad.json()["details"]} == {"/cmd", "/parallel", "/color"}
        created = await api.post("/v1/jobs", json={"cmd": "true", "parallel": 20, "cpus": 0.25, "mem": 16})
        assert created.status_code == 201, created.text
        job_id = created.json()["id"]

        async def all_ran() -> bool:
            asyncio.run_coroutine_threadsafe(finish_running(served), served.loop).result(5)
            return (await api.get(f"/v1/jobs/{job_id}")).json()["done"]

        await wait_until_async(all_ran, 20, message="the job's 20 tasks finished")
        job = (await api.get(f"/v1/jobs/{job_id}")).json()
        assert job["succeeded"] == 20 and job["failed"] == 0
        # 8 tasks of 0.25 cpus fill a 2-cpu agent: 20 need both agents and a second wave.
        assert {t["agent_id"] for t in job["tasks"]} == {"agent-1", "agent-2"}
        assert all(t["message"] == "exited with status 0" for t in job["tasks"])
        # Idle again: suppressed, no offer outstanding, nothing allocated; every agent whole.
        await wait_until_async(lambda: framework.suppressed and not master.frameworks.frameworks[
            framework.framework_id].offers, 10, message="suppressed with no offers")
        assert master.allocator.allocation(framework.framework_id) == {}
        await wait_until_async(lambda: all(master.allocator.free(a)["cpus"] == 2 for a in ("agent-1", "agent-2")),
                               10, message="every agent's cpus free")
        unknown = await api.get("/v1/jobs/nope")
        assert unknown.status_code == 404
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await api.aclose()
        await framework.close()


async def test_a_replaced_scheduler_fails_over_into_its_predecessors_framework(served):
    first = BatchFramework(served.mesos_url, "batch-phoenix", secret=ServedMaster.SECRET, failover_timeout=300)
    runner = asyncio.ensure_future(first.run())
    master = served.master
    await wait_until_async(lambda: first.connected, 10, message="first subscribed")
    job = await first.submit("sleep 600", 2, 0.1, 16)
    await wait_until_async(lambda: all(t.state == "TASK_RUNNING" for t in job.tasks), 10,
                           message="tasks running")
    framework_id = first.framework_id
    runner.cancel()                                   # the scheduler's task dies
    await asyncio.gather(runner, return_exceptions=True)
    await first.close()
    await wait_until_async(lambda: not master.frameworks.frameworks[framework_id].connected, 10,
                           message="the master sees it gone")
    second = BatchFramework(served.mesos_url, "batch-phoenix", secret=ServedMaster.SECRET, failover_timeout=300)
    runner = asyncio.ensure_future(second.run())
    try:
        await wait_until_async(lambda: second.connected, 10, message="second subscribed")
        assert second.framework_id == framework_id
        framework = master.frameworks.frameworks[framework_id]
        assert {t.task_id for t in framework.tasks.values()} == {t.task_id for t in job.tasks}
        asyncio.run_coroutine_threadsafe(finish_running(served), served.loop).result(5)
        await wait_until_async(lambda: not framework.tasks and not framework.pending, 10,
                               message="the old tasks end, their updates acknowledged")
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await second.close()
