"""Marathon's many-app contract on the master harness: groups and dependency order, versions and
rollback, deployment rollback and cancel, bulk kills, the queue's delay, service-port clashes,
health check results (issue 19)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.master_harness import Cluster, running_cluster

HEALTH = [{"protocol": "HTTP", "path": "/", "portIndex": 0}]


def app(app_id: str, **extra: Any) -> dict[str, Any]:
    return {"id": app_id, "cmd": "sleep 100", "cpus": 0.1, "mem": 16, **extra}


def three_tier() -> dict[str, Any]:
    """web → api → db, relative ids and dependencies, every app health-checked."""
    return {"id": "/prod", "apps": [
        app("db", healthChecks=HEALTH),
        app("api", dependencies=["db"], healthChecks=HEALTH),
        app("web", dependencies=["/prod/api"], healthChecks=HEALTH)]}


@pytest.fixture
async def cluster():
    async with running_cluster(2) as c:
        yield c


def live(cluster, app_id: str) -> list:
    return [t for t in cluster.scheduler.app_tasks(app_id) if not t.terminal]


async def healthy(cluster, app_id: str, value: bool = True) -> None:
    """The fake agents report the app's running tasks healthy (or not), as their checks would."""
    for task in live(cluster, app_id):
        if task.state == "TASK_RUNNING":
            await cluster.fake.report(task.agent_id, task.task_id, "TASK_RUNNING", healthy=value)
    await cluster.settle()


async def deployments(cluster) -> list[dict[str, Any]]:
    return (await cluster.marathon.get("/v2/deployments")).json()


async def test_group_deploys_in_dependency_order_scales_and_is_removed_in_reverse(cluster):
    created = await cluster.marathon.post("/v2/groups", json=three_tier())
    assert created.status_code == 201, created.text
    assert created.headers["location"] == "/v2/groups/prod"
    await cluster.settle()
    (plan,) = await deployments(cluster)
    assert plan["id"] == created.json()["deploymentId"]
    early = await cluster.marathon.post("/v2/apps", json=app("/prod/web"))     # not started yet, but planned
    assert early.status_code == 409 and early.json()["deployments"] == [{"id": plan["id"]}]
    assert [[a["app"] for a in s["actions"]] for s in plan["steps"]] == [["/prod/db"], ["/prod/api"], ["/prod/web"]]
    assert {a["action"] for s in plan["steps"] for a in s["actions"]} == {"StartApplication"}
    # Each app starts only once the one it depends on is healthy.
    for current, later in (("/prod/db", ["/prod/api", "/prod/web"]), ("/prod/api", ["/prod/web"])):
        (plan,) = await deployments(cluster)
        assert plan["currentActions"][0]["app"] == current and plan["totalSteps"] == 3
        assert [t.state for t in live(cluster, current)] == ["TASK_RUNNING"]
        assert all(not live(cluster, a) and a not in cluster.scheduler.apps for a in later)
        await healthy(cluster, current)
    await healthy(cluster, "/prod/web")
    assert await deployments(cluster) == []

    group = (await cluster.marathon.get("/v2/groups/prod")).json()
    assert group["id"] == "/prod" and [a["id"] for a in group["apps"]] == ["/prod/api", "/prod/db", "/prod/web"]
    assert next(a for a in group["apps"] if a["id"] == "/prod/web")["dependencies"] == ["/prod/api"]
    root = (await cluster.marathon.get("/v2/groups")).json()
    assert root["id"] == "/" and [g["id"] for g in root["groups"]] == ["/prod"]
    only_groups = (await cluster.marathon.get("/v2/groups", params={"embed": "group.groups"})).json()
    assert only_groups["groups"][0]["apps"] == []
    with_tasks = (await cluster.marathon.get("/v2/groups/prod", params={"embed": "group.apps.tasks"})).json()
    assert all(len(a["tasks"]) == 1 for a in with_tasks["apps"])

    scaled = await cluster.marathon.put("/v2/groups/prod", json={"scaleBy": 2})
    assert scaled.status_code == 200, scaled.text
    await cluster.settle()
    (plan,) = await deployments(cluster)
    assert [[a["action"] + " " + a["app"] for a in s["actions"]] for s in plan["steps"]] == [
        ["ScaleApplication /prod/db"], ["ScaleApplication /prod/api"], ["ScaleApplication /prod/web"]]
    for app_id in ("/prod/db", "/prod/api", "/prod/web"):
        await healthy(cluster, app_id)
    assert await deployments(cluster) == []
    assert {a: cluster.scheduler.apps[a].instances for a in cluster.scheduler.apps} == {
        "/prod/db": 2, "/prod/api": 2, "/prod/web": 2}
    assert all(len(live(cluster, a)) == 2 for a in cluster.scheduler.apps)

    cluster.fake.kills.clear()
    removed = await cluster.marathon.delete("/v2/groups/prod")
    assert removed.status_code == 200 and removed.json()["deploymentId"]
    plan = (await deployments(cluster))[0]
    assert [[a["action"] + " " + a["app"] for a in s["actions"]] for s in plan["steps"]] == [
        ["StopApplication /prod/web"], ["StopApplication /prod/api"], ["StopApplication /prod/db"]]
    for _ in range(6):
        await cluster.settle()
    assert [k.split(".")[0] for k in cluster.fake.kills] == \
        ["prod_web"] * 2 + ["prod_api"] * 2 + ["prod_db"] * 2
    assert await deployments(cluster) == [] and cluster.scheduler.apps == {}
    assert (await cluster.marathon.get("/v2/groups/prod")).status_code == 404


async def test_group_errors_name_the_cycle_the_missing_dependency_and_the_clash(cluster):
    cyclic = {"id": "/loop", "apps": [app("a", dependencies=["b"]), app("b", dependencies=["c"]),
                                      app("c", dependencies=["/loop/a"])]}
    resp = await cluster.marathon.post("/v2/groups", json=cyclic)
    assert resp.status_code == 422
    assert "dependency cycle: /loop/a → /loop/b → /loop/c → /loop/a" in resp.json()["details"][0]["errors"][0]
    missing = {"id": "/shop", "apps": [app("web", dependencies=["cache"])]}
    resp = await cluster.marathon.post("/v2/groups", json=missing)
    assert resp.status_code == 422 and "/shop/cache" in resp.json()["details"][0]["errors"][0]
    single = await cluster.post_app(app("/lonely", dependencies=["/nowhere"]))
    assert single.status_code == 422 and "/nowhere" in single.json()["details"][0]["errors"][0]
    assert cluster.scheduler.apps == {} and await deployments(cluster) == []
    bad_app = {"id": "/bad", "apps": [{"id": "x", "cmd": "true", "instances": -1}]}
    resp = await cluster.marathon.post("/v2/groups", json=bad_app)
    assert resp.status_code == 422 and resp.json()["details"][0]["path"] == "/apps(0)/instances"
    twice = await cluster.marathon.post("/v2/groups", json={"id": "/d", "apps": [app("a"), app("/d/a")]})
    assert twice.status_code == 422 and twice.json()["details"] == [
        {"path": "/apps(1)/id", "errors": ["/d/a is defined twice"]}]
    elsewhere = await cluster.marathon.post("/v2/groups", json={"id": "/d", "groups": [{"id": "/x/y"}]})
    assert elsewhere.status_code == 422 and "not a direct child of group /d" in elsewhere.text

    assert (await cluster.marathon.post("/v2/groups", json={"id": "/empty"})).status_code == 201
    again = await cluster.marathon.post("/v2/groups", json={"id": "/empty"})
    assert again.status_code == 409 and "already created" in again.json()["message"]
    assert (await cluster.marathon.get("/v2/groups/empty")).json()["apps"] == []
    assert (await cluster.marathon.get("/v2/groups/nothing")).status_code == 404
    assert (await cluster.marathon.delete("/v2/groups/nothing")).status_code == 404
    assert (await cluster.marathon.delete("/v2/deployments/nope")).status_code == 404

    await cluster.post_app(app("/one", portDefinitions=[{"port": 10500}]))
    clash = await cluster.post_app(app("/two", portDefinitions=[{"port": 10500}]))
    assert clash.status_code == 422
    assert clash.json()["details"] == [{"path": "/portDefinitions(0)/port", "errors": [
        "Requested service port 10500 conflicts with a service port in app /one"]}]


async def test_conflicting_group_change_during_a_deployment_is_409_unless_forced(cluster):
    await cluster.marathon.post("/v2/groups", json={"id": "/g", "apps": [app("slow", healthChecks=HEALTH)]})
    await cluster.settle()
    (plan,) = await deployments(cluster)
    change = {"id": "/g", "apps": [app("slow", cmd="sleep 200", healthChecks=HEALTH)]}
    locked = await cluster.marathon.put("/v2/groups/g", json=change)
    assert locked.status_code == 409 and locked.json()["deployments"] == [{"id": plan["id"]}]
    forced = await cluster.marathon.put("/v2/groups/g", json=change, params={"force": "true"})
    assert forced.status_code == 200
    await cluster.settle()
    (now,) = await deployments(cluster)
    assert now["id"] == forced.json()["deploymentId"] != plan["id"]
    assert cluster.scheduler.apps["/g/slow"].cmd == "sleep 200"


async def test_versions_and_rolling_an_app_back_to_its_first(cluster):
    first = (await cluster.post_app(app("/svc", instances=2))).json()
    for cmd in ("sleep 200", "sleep 300"):
        await cluster.marathon.put("/v2/apps/svc", json={"cmd": cmd})
        await cluster.settle()
    versions = (await cluster.marathon.get("/v2/apps/svc/versions")).json()["versions"]
    assert len(versions) == 3 and versions[-1] == first["version"] and versions == sorted(versions, reverse=True)
    old = (await cluster.marathon.get(f"/v2/apps/svc/versions/{first['version']}")).json()
    assert old["cmd"] == "sleep 100" and old["version"] == first["version"]
    assert (await cluster.marathon.get("/v2/apps/svc/versions/2001-01-01T00:00:00.000Z")).status_code == 404
    no_app = await cluster.marathon.put("/v2/apps/nosvc", json={"version": first["version"]})
    assert no_app.status_code == 404 and no_app.json()["message"] == "App '/nosvc' does not exist"
    unknown = await cluster.marathon.put("/v2/apps/svc", json={"version": "2001-01-01T00:00:00.000Z"})
    assert unknown.status_code == 404 and "2001-01-01" in unknown.json()["message"]

    before = {t.task_id for t in live(cluster, "/svc")}
    back = await cluster.marathon.put("/v2/apps/svc", json={"version": first["version"]})
    assert back.status_code == 200 and back.json()["deploymentId"]
    for _ in range(3):
        await cluster.settle()
    now = (await cluster.marathon.get("/v2/apps/svc")).json()["app"]
    ignored = {"version", "versionInfo", "tasks", "tasksRunning", "tasksStaged", "tasksHealthy", "tasksUnhealthy",
               "deployments", "lastTaskFailure"}
    assert {k: v for k, v in now.items() if k not in ignored} == {k: v for k, v in old.items() if k not in ignored}
    after = {t.task_id for t in live(cluster, "/svc")}
    assert len(after) == 2 and not after & before       # tasks replaced
    assert len((await cluster.marathon.get("/v2/apps/svc/versions")).json()["versions"]) == 4
    await cluster.marathon.delete("/v2/apps/svc")
    await cluster.settle()
    assert (await cluster.marathon.get("/v2/apps/svc/versions")).status_code == 404


async def test_a_stuck_deployment_is_rolled_back_and_another_cancelled(cluster):
    await cluster.post_app(app("/stuck", healthChecks=HEALTH))
    await healthy(cluster, "/stuck")
    assert await deployments(cluster) == []
    good = {t.task_id for t in live(cluster, "/stuck")}
    await cluster.marathon.put("/v2/apps/stuck", json={"cmd": "sleep 999"})
    await cluster.settle()
    (plan,) = await deployments(cluster)       # the new task never becomes healthy
    assert len(live(cluster, "/stuck")) == 2
    rolled = await cluster.marathon.delete(f"/v2/deployments/{plan['id']}")
    assert rolled.status_code == 200 and rolled.json()["deploymentId"] != plan["id"]
    assert rolled.headers["marathon-deployment-id"] == rolled.json()["deploymentId"]
    for _ in range(3):
        await cluster.settle()
    assert await deployments(cluster) == []
    assert cluster.scheduler.apps["/stuck"].cmd == "sleep 100"
    assert {t.task_id for t in live(cluster, "/stuck")} == good      # the healthy task stayed

    await cluster.marathon.put("/v2/apps/stuck", json={"cmd": "sleep 998"})
    await cluster.settle()
    (other,) = await deployments(cluster)
    cancelled = await cluster.marathon.delete(f"/v2/deployments/{other['id']}", params={"force": "true"})
    assert cancelled.status_code == 202 and cancelled.content == b""
    assert await deployments(cluster) == []
    assert cluster.scheduler.apps["/stuck"].cmd == "sleep 998"     # nothing rolled back


async def test_rolling_back_a_group_deployment_removes_what_it_started(cluster):
    await cluster.marathon.post("/v2/groups", json=three_tier())
    await cluster.settle()
    await healthy(cluster, "/prod/db")
    (plan,) = await deployments(cluster)
    assert plan["currentStep"] == 2
    rolled = await cluster.marathon.delete(f"/v2/deployments/{plan['id']}")
    assert rolled.status_code == 200
    for _ in range(4):
        await cluster.settle()
    assert cluster.scheduler.apps == {} and not cluster.scheduler.tasks
    assert await deployments(cluster) == []
    assert (await cluster.marathon.get("/v2/groups/prod")).status_code == 404     # the group it created, too


async def test_bulk_kills_scale_or_replace_and_the_queue_delay_resets(cluster):
    await cluster.post_app(app("/many", instances=3))
    tasks = [t.task_id for t in live(cluster, "/many")]
    replaced = await cluster.marathon.post("/v2/tasks/delete", json={"ids": [tasks[0], "nope"]})
    assert replaced.status_code == 200 and [t["id"] for t in replaced.json()["tasks"]] == [tasks[0]]
    await cluster.settle()
    assert len(live(cluster, "/many")) == 3 and tasks[0] not in {t.task_id for t in live(cluster, "/many")}
    tasks = [t.task_id for t in live(cluster, "/many")]
    scaled = await cluster.marathon.post("/v2/tasks/delete", params={"scale": "true"}, json={"ids": tasks[:2]})
    assert scaled.status_code == 200 and set(scaled.json()) == {"version", "deploymentId"}
    await cluster.settle()
    assert cluster.scheduler.apps["/many"].instances == 1 and [t.task_id for t in live(cluster, "/many")] == tasks[2:]
    bad = await cluster.marathon.post("/v2/tasks/delete", json={"ids": "x"})
    assert bad.status_code == 422 and bad.json()["details"][0]["path"] == "/ids"

    await cluster.marathon.put("/v2/apps/many", json={"instances": 4})
    await cluster.settle()
    host = live(cluster, "/many")[0].hostname
    on_host = [t.task_id for t in live(cluster, "/many") if t.hostname == host]
    by_host = await cluster.marathon.delete("/v2/apps/many/tasks", params={"host": host, "scale": "true"})
    assert by_host.status_code == 200 and "deploymentId" in by_host.json()
    await cluster.settle()
    assert cluster.scheduler.apps["/many"].instances == 4 - len(on_host)
    assert all(t.hostname != host for t in live(cluster, "/many"))
    wiped = await cluster.marathon.delete("/v2/apps/many/tasks")
    assert {t["id"] for t in wiped.json()["tasks"]} and cluster.scheduler.apps["/many"].instances == 4 - len(on_host)

    # A task that fails makes its app back off; DELETE /v2/queue/{id}/delay ends the wait.
    await cluster.post_app(app("/crashy", backoffSeconds=600))
    (task,) = live(cluster, "/crashy")
    await cluster.fake.report(task.agent_id, task.task_id, "TASK_FAILED", message="boom")
    await cluster.settle(1)
    assert cluster.scheduler.queue.delay_left("/crashy") > 500 and not live(cluster, "/crashy")
    reset = await cluster.marathon.delete("/v2/queue/crashy/delay")
    assert reset.status_code == 204
    await cluster.settle()
    assert cluster.scheduler.queue.delay_left("/crashy") == 0 and len(live(cluster, "/crashy")) == 1
    assert (await cluster.marathon.delete("/v2/queue/nothing/delay")).status_code == 404


async def test_health_check_results_carry_marathons_fields(cluster):
    await cluster.post_app(app("/checked", healthChecks=HEALTH))
    await healthy(cluster, "/checked")
    (result,) = (await cluster.marathon.get("/v2/apps/checked")).json()["app"]["tasks"][0]["healthCheckResults"]
    assert result["alive"] is True and result["consecutiveFailures"] == 0
    assert result["firstSuccess"] and result["lastSuccess"] and result["lastFailure"] is None
    await healthy(cluster, "/checked", False)
    (result,) = (await cluster.marathon.get("/v2/apps/checked")).json()["app"]["tasks"][0]["healthCheckResults"]
    assert result["alive"] is False and result["consecutiveFailures"] == 1 and result["lastFailure"]
    assert result["firstSuccess"]


async def test_a_restarted_master_continues_a_group_deployment_and_keeps_versions(tmp_path):
    cluster = Cluster(state_dir=tmp_path)
    try:
        for index in (1, 2):
            await cluster.register(index)
        await cluster.marathon.post("/v2/groups", json=three_tier())
        await cluster.settle()
        await healthy(cluster, "/prod/db")
        (plan,) = await deployments(cluster)
        assert plan["currentStep"] == 2
    finally:
        await cluster.close()
    again = Cluster(state_dir=tmp_path, fake=cluster.fake)
    try:
        (resumed,) = await deployments(again)
        assert resumed == plan and set(again.scheduler.apps) == {"/prod/db", "/prod/api"}
        assert len((await again.marathon.get("/v2/apps/prod/db/versions")).json()["versions"]) == 1
        assert (await again.marathon.get("/v2/groups/prod")).json()["id"] == "/prod"
        await again.settle()
        await healthy(again, "/prod/api")
        await healthy(again, "/prod/web")
        assert await deployments(again) == [] and set(again.scheduler.apps) == {"/prod/db", "/prod/api", "/prod/web"}
    finally:
        await again.close()


def test_a_deployment_stored_before_plans_had_steps_still_loads():
    from control.deployments import Deployment
    old = Deployment.model_validate({"id": "d1", "version": "v", "app_id": "/a", "action": "ScaleApplication",
                                     "started_at": 1.0})
    assert old.affected_apps == ["/a"] and old.to_marathon()["steps"] == [
        {"actions": [{"action": "ScaleApplication", "app": "/a"}]}]


async def test_an_app_of_a_later_step_gets_its_named_vip_when_stored_and_group_events(cluster):
    events = cluster.master.events.subscribe({"group_change_success", "deployment_step_success"})
    vip = {"portDefinitions": [{"port": 0, "labels": {"VIP_0": "/shopfront:80"}}]}
    body = {"id": "/vipped", "apps": [app("db", healthChecks=HEALTH), app("front", dependencies=["db"], **vip)]}
    await cluster.marathon.post("/v2/groups", json=body)
    await cluster.settle()
    assert "marathon:/shopfront" not in cluster.master.vips.allocations      # front waits for db
    await healthy(cluster, "/vipped/db")
    assert "marathon:/shopfront" in cluster.master.vips.allocations
    seen = [events.get_nowait() for _ in range(events.qsize())]
    assert [e["eventType"] for e in seen][:2] == ["group_change_success", "deployment_step_success"]
    assert seen[0]["groupId"] == "/vipped"
    cluster.master.events.unsubscribe(events)


async def test_put_makes_the_group_what_the_body_says(cluster):
    body = {"id": "/site", "apps": [app("a"), app("b")], "groups": [{"id": "sub", "apps": [app("c")]}]}
    created = await cluster.marathon.put("/v2/groups/site", json=body)      # PUT creates a missing group
    assert created.status_code == 200, created.text
    await cluster.settle()
    assert set(cluster.scheduler.apps) == {"/site/a", "/site/b", "/site/sub/c"}
    a_tasks = {t.task_id for t in live(cluster, "/site/a")}
    changed = await cluster.marathon.put("/v2/groups/site", json={"apps": [app("a"), app("d", instances=2)],
                                                                  "groups": []})
    (plan,) = await deployments(cluster)
    assert plan["id"] == changed.json()["deploymentId"]
    assert sorted(a["action"] + " " + a["app"] for s in plan["steps"] for a in s["actions"]) == [
        "StartApplication /site/d", "StopApplication /site/b", "StopApplication /site/sub/c"]
    await cluster.settle()
    assert set(cluster.scheduler.apps) == {"/site/a", "/site/d"} and len(live(cluster, "/site/d")) == 2
    assert {t.task_id for t in live(cluster, "/site/a")} == a_tasks      # unchanged app untouched
    assert (await cluster.marathon.get("/v2/groups/site/sub")).status_code == 404
    renamed = await cluster.marathon.put("/v2/groups/site", json={"id": "/elsewhere"})
    assert renamed.status_code == 422 and renamed.json()["details"][0]["path"] == "/id"
    taken = await cluster.marathon.post("/v2/groups", json={"id": "/site/a"})
    assert taken.status_code == 422 and "/site/a is an app" in taken.text
    shadow = await cluster.marathon.put("/v2/groups/", json={"apps": [app("site")]})
    assert shadow.status_code == 422 and "/site is a group" in shadow.text


async def test_group_versions_and_rolling_a_group_back(cluster):
    await cluster.marathon.post("/v2/groups", json={"id": "/gv", "apps": [app("a"), app("b")]})
    await cluster.settle()
    await cluster.marathon.put("/v2/groups/gv", json={"scaleBy": 2})
    await cluster.settle()
    await cluster.marathon.put("/v2/groups/gv", json={"apps": [app("a", instances=2)]})     # b stops
    await cluster.settle()
    versions = (await cluster.marathon.get("/v2/groups/gv/versions")).json()
    assert len(versions) == 3 and versions == sorted(versions, reverse=True)
    first = (await cluster.marathon.get(f"/v2/groups/gv/versions/{versions[-1]}")).json()
    assert first["id"] == "/gv" and [(a["id"], a["instances"]) for a in first["apps"]] == [("/gv/a", 1), ("/gv/b", 1)]
    assert set(cluster.scheduler.apps) == {"/gv/a"}
    back = await cluster.marathon.put("/v2/groups/gv", json={"version": versions[-1]})
    assert back.status_code == 200, back.text
    await cluster.settle()
    assert {a: cluster.scheduler.apps[a].instances for a in cluster.scheduler.apps} == {"/gv/a": 1, "/gv/b": 1}
    assert len(live(cluster, "/gv/b")) == 1
    assert len((await cluster.marathon.get("/v2/groups/gv/versions")).json()) == 4
    unknown = await cluster.marathon.put("/v2/groups/gv/versions/2001-01-01T00:00:00.000Z")
    assert unknown.status_code == 404 and "2001-01-01" in unknown.json()["message"]
    assert (await cluster.marathon.get("/v2/groups/gv/versions/2001-01-01T00:00:00.000Z")).status_code == 404
    await cluster.marathon.delete("/v2/groups/gv")
    await cluster.settle()
    assert cluster.master.groups.versions.versions("/gv") == []
    assert (await cluster.marathon.get("/v2/groups/gv/versions")).status_code == 404
