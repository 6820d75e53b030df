"""Deployment rules a Marathon user relies on, through the HTTP API only (a master with fake agents
and a clock the test moves): DELETE and restart are refused with 409 while a deployment runs, a
task that ran long resets its app's backoff, and ``maximumOverCapacity`` > 0 lets a rolling
upgrade start that many extra tasks while every old one keeps serving."""

from __future__ import annotations

from typing import Any

from control.agent_client import FakeAgents
from tests.unit.master_harness import Cluster, running_cluster


def app(**extra: Any) -> dict[str, Any]:
    return {"id": "/web", "cmd": "serve", "cpus": 0.1, "mem": 16, "instances": 1, **extra}


async def tasks(cluster: Cluster) -> list[dict[str, Any]]:
    resp = await cluster.marathon.get("/v2/apps/web/tasks")
    assert resp.status_code == 200, resp.text
    return resp.json()["tasks"]


async def run_staged(cluster: Cluster) -> None:
    """The agents report every staged task of /web running, as real agents would."""
    for task in await tasks(cluster):
        if task["state"] == "TASK_STAGING":
            await cluster.fake.report(task["slaveId"], task["id"], "TASK_RUNNING")
    await cluster.settle()


async def deployments(cluster: Cluster) -> list[str]:
    return [d["id"] for d in (await cluster.marathon.get("/v2/deployments")).json()]


# -- the deployment lock --------------------------------------------------------------------------
async def test_delete_and_restart_are_refused_with_409_while_a_deployment_runs():
    async with running_cluster(fake=FakeAgents(auto_run=False)) as cluster:
        created = await cluster.post_app(app(instances=2))
        assert created.status_code == 201, created.text
        deployment = created.json()["deployments"][0]["id"]
        assert await deployments(cluster) == [deployment]       # tasks staged, none running yet

        for refused in (await cluster.marathon.delete("/v2/apps/web"),
                        await cluster.marathon.post("/v2/apps/web/restart")):
            assert refused.status_code == 409, refused.text
            assert deployment in refused.text                   # names the deployment in the way
        await cluster.settle()
        assert (await cluster.marathon.get("/v2/apps/web")).status_code == 200   # nothing removed
        assert await deployments(cluster) == [deployment]
        assert {t["state"] for t in await tasks(cluster)} == {"TASK_STAGING"}    # nothing restarted

        forced = await cluster.marathon.post("/v2/apps/web/restart", params={"force": "true"})
        assert forced.status_code == 200, forced.text
        removed = await cluster.marathon.delete("/v2/apps/web", params={"force": "true"})
        assert removed.status_code == 200, removed.text
        await cluster.settle()
        assert (await cluster.marathon.get("/v2/apps/web")).status_code == 404


async def test_delete_and_restart_are_accepted_once_the_deployment_is_done():
    async with running_cluster() as cluster:
        assert (await cluster.post_app(app(instances=2))).status_code == 201
        assert await deployments(cluster) == []
        assert (await cluster.marathon.post("/v2/apps/web/restart")).status_code == 200
        await cluster.settle()
        assert await deployments(cluster) == []
        assert (await cluster.marathon.delete("/v2/apps/web")).status_code == 200


# -- backoff --------------------------------------------------------------------------------------
async def launch_delay(cluster: Cluster) -> int | None:
    """``/v2/queue``'s delay before /web's next launch; None when /web is not waiting."""
    queue = (await cluster.marathon.get("/v2/queue")).json()["queue"]
    waiting = [item["delay"]["timeLeftSeconds"] for item in queue if item["app"]["id"] == "/web"]
    return waiting[0] if waiting else None


async def fail_after(cluster: Cluster, seconds: float) -> int | None:
    """/web's running task fails after running ``seconds``; returns the launch delay that follows."""
    (task,) = [t for t in await tasks(cluster) if t["state"] == "TASK_RUNNING"]
    cluster.clock.advance(seconds)
    await cluster.fake.report(task["slaveId"], task["id"], "TASK_FAILED", message="exited with status 1")
    await cluster.settle()
    return await launch_delay(cluster)


async def relaunched(cluster: Cluster, delay: float) -> None:
    cluster.clock.advance(delay)
    await cluster.settle()
    assert [t["state"] for t in await tasks(cluster)] == ["TASK_RUNNING"]


async def test_backoff_grows_for_a_crash_loop_and_resets_after_a_long_run():
    async with running_cluster() as cluster:
        await cluster.post_app(app(backoffSeconds=10, backoffFactor=2, maxLaunchDelaySeconds=300))
        assert [t["state"] for t in await tasks(cluster)] == ["TASK_RUNNING"]
        assert await fail_after(cluster, 1) == 10
        cluster.clock.advance(5)
        await cluster.settle()
        assert await tasks(cluster) == []                       # still backing off
        await relaunched(cluster, 5)
        assert await fail_after(cluster, 1) == 20               # a crash loop: the delay doubles
        await relaunched(cluster, 20)
        assert await fail_after(cluster, 1) == 40
        await relaunched(cluster, 40)
        assert await fail_after(cluster, 600) == 10             # it ran ten minutes: back to backoffSeconds
        await relaunched(cluster, 10)
        assert await fail_after(cluster, 1) == 20               # and grows again from there


# -- maximumOverCapacity --------------------------------------------------------------------------
async def test_maximum_over_capacity_starts_extra_tasks_while_every_old_one_serves():
    strategy = {"minimumHealthCapacity": 1.0, "maximumOverCapacity": 0.5}
    async with running_cluster(agents=2) as cluster:
        await cluster.post_app(app(instances=4, upgradeStrategy=strategy))
        before = await tasks(cluster)
        assert len(before) == 4 and {t["state"] for t in before} == {"TASK_RUNNING"}
        old_version = before[0]["version"]

        cluster.fake.auto_run = False                           # new tasks stay staged until told
        changed = await cluster.marathon.put("/v2/apps/web", json=app(instances=4, cmd="serve --v2",
                                                                       upgradeStrategy=strategy))
        assert changed.status_code == 200, changed.text
        await cluster.settle()
        during = await tasks(cluster)
        old = [t for t in during if t["version"] == old_version]
        new = [t for t in during if t["version"] != old_version]
        assert len(old) == 4 and {t["state"] for t in old} == {"TASK_RUNNING"}   # none killed yet
        assert len(new) == 2 and {t["state"] for t in new} == {"TASK_STAGING"}   # 4 × 0.5 extra

        seen_most = len(during)
        for _ in range(4):                                      # the upgrade rolls on as new tasks run
            await run_staged(cluster)
            now = await tasks(cluster)
            seen_most = max(seen_most, len(now))
            running = [t for t in now if t["state"] == "TASK_RUNNING"]
            assert len(running) >= 4, now                      # minimumHealthCapacity 1: never fewer
        assert seen_most == 6                                   # never more than 4 + 2
        after = await tasks(cluster)
        assert len(after) == 4 and all(t["version"] != old_version and t["state"] == "TASK_RUNNING"
                                       for t in after)
        assert await deployments(cluster) == []
