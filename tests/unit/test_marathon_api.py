"""The Marathon REST API as a client sees it: shapes, defaults, status codes, events."""

import asyncio
import json

import pytest

from tests.reference import EXAMPLES
from tests.unit.master_harness import Cluster, running_cluster

# The design article's seed apps, as a user would post them (examples/README.md); a missing one fails.
SEED_EXAMPLES = ("nginx-marathon-lb.json", "nginxdocker-overlay.json", "nginxdocker-vip.json",
                 "nginxmesos-overlay.json")
WEB = {"id": "/shop/web", "cmd": "python3 -m http.server $PORT0", "instances": 2,
       "constraints": [["hostname", "UNIQUE"]]}


@pytest.fixture
async def cluster():
    async with running_cluster(2) as c:
        yield c


async def test_create_fills_marathon_defaults_and_runs(cluster):
    resp = await cluster.post_app({"id": "web", "cmd": "sleep 100"})
    assert resp.status_code == 201
    assert resp.headers["location"] == "/v2/apps/web"
    app = resp.json()
    assert app["id"] == "/web"
    assert (app["instances"], app["cpus"], app["mem"], app["disk"]) == (1, 1.0, 128.0, 0.0)
    assert app["backoffSeconds"] == 1 and app["backoffFactor"] == 1.15
    assert app["upgradeStrategy"] == {"minimumHealthCapacity": 1.0, "maximumOverCapacity": 1.0}
    assert app["unreachableStrategy"] == {"inactiveAfterSeconds": 300, "expungeAfterSeconds": 600}
    assert app["portDefinitions"][0]["port"] >= 10000   # service port assigned
    assert app["version"] == app["versionInfo"]["lastConfigChangeAt"]
    got = (await cluster.marathon.get("/v2/apps/web")).json()["app"]
    assert got["tasksRunning"] == 1 and len(got["tasks"]) == 1
    assert got["tasks"][0]["id"].startswith("web.")


async def test_group_ids_route_to_app_tasks_and_task_names(cluster):
    await cluster.post_app(WEB)
    tasks = (await cluster.marathon.get("/v2/apps/shop/web/tasks")).json()["tasks"]
    assert len(tasks) == 2 and {t["slaveId"] for t in tasks} == {"agent-1", "agent-2"}
    assert all(t["id"].startswith("shop_web.") and t["state"] == "TASK_RUNNING" for t in tasks)
    assert all(31000 <= t["ports"][0] <= 31100 for t in tasks)
    listed = (await cluster.marathon.get("/v2/apps", params={"embed": "apps.tasks"})).json()["apps"]
    assert [len(a["tasks"]) for a in listed] == [2]
    assert (await cluster.marathon.get("/v2/tasks")).json()["tasks"][0]["appId"] == "/shop/web"


async def test_error_shapes_400_404_409_422(cluster):
    bad_json = await cluster.marathon.post("/v2/apps", content=b"{nope", headers={"content-type": "application/json"})
    assert bad_json.status_code == 400 and bad_json.json()["message"] == "Invalid JSON"
    assert (await cluster.marathon.get("/v2/apps/nothing/here")).status_code == 404
    assert (await cluster.marathon.delete("/v2/apps/nothing")).status_code == 404
    assert (await cluster.marathon.post("/v2/apps/nothing/restart")).status_code == 404
    invalid = await cluster.marathon.post("/v2/apps", json={
        "id": "/x", "cmd": "true", "instances": -1,
        "healthChecks": [{"protocol": "HTTP", "portIndex": 3}],
        "constraints": [["hostname", "NEAR"]]})
    assert invalid.status_code == 422
    body = invalid.json()
    assert body["message"] == "Object is not valid"
    paths = {d["path"]: d["errors"] for d in body["details"]}
    assert "/instances" in paths
    invalid2 = await cluster.marathon.post("/v2/apps", json={
        "id": "/x", "cmd": "true", "healthChecks": [{"protocol": "HTTP", "portIndex": 3}],
        "constraints": [["hostname", "NEAR"]]})
    paths = {d["path"]: d["errors"] for d in invalid2.json()["details"]}
    assert "/healthChecks(0)/portIndex" in paths and "/constraints(0)" in paths
    bad_id = await cluster.marathon.post("/v2/apps", json={"id": "/Shop_Web", "cmd": "true"})
    assert bad_id.status_code == 422 and bad_id.json()["details"][0]["path"] == "/id"
    nothing = await cluster.marathon.post("/v2/apps", json={"id": "/empty"})
    assert nothing.status_code == 422 and "cmd" in nothing.json()["details"][0]["errors"][0]
    typo = await cluster.marathon.post("/v2/apps", json={"id": "/t", "cmd": "true", "instnaces": 2})
    assert typo.status_code == 422 and typo.json()["details"][0]["path"] == "/instnaces"
    early = await cluster.marathon.post("/v2/apps", json={
        "id": "/u", "cmd": "true", "unreachableStrategy": {"inactiveAfterSeconds": 60, "expungeAfterSeconds": 30}})
    assert early.status_code == 422
    assert early.json()["details"][0]["path"] == "/unreachableStrategy/expungeAfterSeconds"
    unknown = await cluster.marathon.post("/v2/apps", json={"id": "/u", "cmd": "true", "unreachableStrategy": "later"})
    assert unknown.status_code == 422 and unknown.json()["details"][0]["path"].startswith("/unreachableStrategy")
    assert (await cluster.post_app({"id": "/dup", "cmd": "true"})).status_code == 201
    again = await cluster.marathon.post("/v2/apps", json={"id": "/dup", "cmd": "true"})
    assert again.status_code == 409 and "already exists" in again.json()["message"]
    # After all that garbage the API still serves.
    assert (await cluster.marathon.get("/v2/apps")).status_code == 200


@pytest.mark.parametrize("example", SEED_EXAMPLES)
async def test_seed_examples_are_accepted_unmodified(cluster, example):
    raw = json.loads((EXAMPLES / example).read_text())
    resp = await cluster.post_app(raw)
    assert resp.status_code == 201, resp.text
    app = resp.json()
    assert app["id"] == "/" + raw["id"]
    launches = [launch for agent in cluster.fake.agents.values() for launch in agent.launches]
    assert launches and all(launch.image == raw["container"]["docker"]["image"] for launch in launches)
    mappings = app["container"]["docker"]["portMappings"]
    assert all("hostPort" in m and "containerPort" in m for m in mappings)   # host_port normalized
    network = raw["container"]["docker"]["network"]
    assert {launch.network for launch in launches} == {"bridge" if network == "BRIDGE" else "container"}
    if network == "USER":
        assert {launch.network_name for launch in launches} == {"dcos"}


async def test_a_network_name_that_no_cni_network_could_have_is_a_clear_422(cluster):
    # Any CNI network an agent has may be named (issue 23: placement finds it); a name that is
    # not a CNI network name is refused at the field.
    resp = await cluster.marathon.post("/v2/apps", json={
        "id": "/n", "cmd": "true", "networks": [{"mode": "container", "name": "we ave"}]})
    assert resp.status_code == 422
    assert resp.json()["details"][0]["path"] == "/networks(0)/name"
    resp = await cluster.marathon.post("/v2/apps", json={
        "id": "/n", "cmd": "true", "ipAddress": {"networkName": "-x"}})
    assert resp.status_code == 422
    assert resp.json()["details"][0]["path"] == "/ipAddress/networkName"
    resp = await cluster.marathon.post("/v2/apps", json={
        "id": "/n", "cmd": "true", "networks": [{"mode": "container", "name": "weave"}]})
    assert resp.status_code == 201, resp.text


async def test_service_ports_running_out_is_a_422_naming_port_definitions(cluster, monkeypatch):
    monkeypatch.setattr("control.app_changes.SERVICE_PORT_RANGE", (10000, 10002))
    two_ports = {"cmd": "sleep 100", "cpus": 0.1, "mem": 16, "instances": 0,
                 "portDefinitions": [{"port": 0}, {"port": 0}]}
    assert (await cluster.post_app({"id": "/first", **two_ports})).status_code == 201
    resp = await cluster.post_app({"id": "/second", **two_ports})
    assert resp.status_code == 422, resp.text
    assert resp.json()["details"][0]["path"] == "/portDefinitions(0)/port"
    assert "10000-10001" in resp.json()["details"][0]["errors"][0]
    assert (await cluster.marathon.get("/v2/apps/second")).status_code == 404
    assert (await cluster.marathon.get("/ping")).status_code == 200


async def test_partial_put_scales_without_restarting_and_config_change_rolls(cluster):
    await cluster.post_app({"id": "/w", "cmd": "sleep 100", "instances": 1, "cpus": 0.1, "mem": 32})
    first = {t.task_id for t in cluster.running("/w")}
    resp = await cluster.marathon.put("/v2/apps/w", json={"instances": 3})
    assert resp.status_code == 200 and "deploymentId" in resp.json()
    await cluster.settle()
    tasks = {t.task_id for t in cluster.running("/w")}
    assert len(tasks) == 3 and first <= tasks
    assert (await cluster.marathon.get("/v2/deployments")).json() == []
    app = (await cluster.marathon.get("/v2/apps/w")).json()["app"]
    assert app["versionInfo"]["lastScalingAt"] != app["versionInfo"]["lastConfigChangeAt"]
    # A config change replaces every task.
    resp = await cluster.marathon.put("/v2/apps/w", json={"cmd": "sleep 200"})
    await cluster.settle(6)
    after = {t.task_id for t in cluster.running("/w")}
    assert len(after) == 3 and not (after & tasks)
    # Restart also replaces them.
    resp = await cluster.marathon.post("/v2/apps/w/restart")
    assert resp.status_code == 200
    await cluster.settle(6)
    assert not ({t.task_id for t in cluster.running("/w")} & after)


async def test_locked_app_needs_force(cluster):
    cluster.fake.auto_run = False
    await cluster.post_app({"id": "/slow", "cmd": "sleep 100"})
    locked = await cluster.marathon.put("/v2/apps/slow", json={"instances": 2})
    assert locked.status_code == 409 and locked.json()["deployments"]
    forced = await cluster.marathon.put("/v2/apps/slow", params={"force": "true"}, json={"instances": 2})
    assert forced.status_code == 200
    assert len((await cluster.marathon.get("/v2/deployments")).json()) == 1


async def test_delete_kills_tasks_via_killing_then_killed(cluster):
    await cluster.post_app(WEB)
    queue = cluster.master.events.subscribe()
    resp = await cluster.marathon.delete("/v2/apps/shop/web")
    assert resp.status_code == 200
    await cluster.settle()
    assert (await cluster.marathon.get("/v2/apps/shop/web")).status_code == 404
    assert cluster.scheduler.tasks == {}
    events = [queue.get_nowait() for _ in range(queue.qsize())]
    states = [e["taskStatus"] for e in events if e["eventType"] == "status_update_event"]
    assert states.count("TASK_KILLING") == 2 and states.count("TASK_KILLED") == 2
    assert states.index("TASK_KILLING") < states.index("TASK_KILLED")
    assert (await cluster.marathon.get("/v2/deployments")).json() == []
    cluster.master.events.unsubscribe(queue)


async def test_queue_explains_an_app_that_fits_nowhere(cluster):
    resp = await cluster.post_app({"id": "/big", "cmd": "true", "cpus": 64})
    assert resp.status_code == 201
    queue = (await cluster.marathon.get("/v2/queue")).json()["queue"]
    assert len(queue) == 1 and queue[0]["count"] == 1
    summary = queue[0]["processedOffersSummary"]
    assert "cpus" in summary["reason"] and "agent-1" in summary["reason"]
    assert {r["reason"] for r in summary["rejectSummaryLastOffers"]} == {"InsufficientCpus"}
    # Scaling it to zero empties the queue.
    await cluster.marathon.put("/v2/apps/big", params={"force": "true"}, json={"instances": 0})
    await cluster.settle()
    assert (await cluster.marathon.get("/v2/queue")).json()["queue"] == []


async def test_info_ping_and_metrics(cluster):
    await cluster.post_app(WEB)
    assert (await cluster.marathon.get("/ping")).text == "pong"
    info = (await cluster.marathon.get("/v2/info")).json()
    assert info["name"] == "marathon" and info["leader"] == "198.18.0.2:8080"
    metrics = (await cluster.marathon.get("/metrics")).text
    assert "navstar_master_apps 1.0" in metrics
    assert 'navstar_master_tasks{state="TASK_RUNNING"} 2.0' in metrics
    assert 'navstar_master_agents{state="reachable"} 2.0' in metrics
    assert "navstar_master_offers_total" in metrics
    assert "navstar_master_allocation_cycle_seconds_count" in metrics


async def test_event_stream_over_http_sends_sse_frames(cluster):
    frames = cluster.master.events.stream(None)
    assert (await frames.__anext__()).startswith("event: event_stream_attached")
    await cluster.post_app({"id": "/ev", "cmd": "true"})
    seen = []
    while True:
        frame = await asyncio.wait_for(frames.__anext__(), 1)
        seen.append(frame.split("\n", 1)[0].removeprefix("event: "))
        if "deployment_success" in seen:
            break
    assert {"api_post_event", "deployment_info", "status_update_event"} <= set(seen)
    await frames.aclose()


async def test_bad_vip_labels_and_address_clashes_are_reported_on_the_apps_events(cluster):
    bus = cluster.master.events
    queue = bus.subscribe()

    def reported() -> list[dict]:
        events = [queue.get_nowait() for _ in range(queue.qsize())]
        return [e for e in events if e["eventType"] == "vip_label_problem_event"]

    ports = [{"port": 0, "labels": {"VIP_0": "/good:80"}}, {"port": 0, "labels": {"VIP_1": "/bad:99999"}},
             {"port": 0, "protocol": "udp", "labels": {"VIP_2": "10.9.9.9:53"}}]
    assert (await cluster.post_app({"id": "/a", "cmd": "true", "portDefinitions": ports})).status_code == 201
    (first,) = reported()
    assert first["appId"] == "/a" and first["message"].startswith("port 1 label VIP_1:") and "99999" in first["message"]
    assert "marathon:/good" in cluster.master.vips.allocations, "the app's other VIP is still served"
    assert "marathon:/bad" not in cluster.master.vips.allocations
    # the same address VIP over TCP is another VIP; over UDP it is a clash, told to both apps
    other = [{"port": 0, "labels": {"VIP_0": "10.9.9.9:53"}},
             {"port": 0, "protocol": "udp", "labels": {"vip": "10.9.9.9:53"}}]
    assert (await cluster.post_app({"id": "/b", "cmd": "true", "portDefinitions": other})).status_code == 201
    clash = reported()
    assert [(e["appId"], e["message"].split(" is also claimed by ")[1].split(";")[0]) for e in clash] == [
        ("/b", "/a"), ("/a", "/b")]
    assert clash[0]["message"].startswith("port 1 label vip: address VIP 10.9.9.9:53/udp"), clash
    bus.unsubscribe(queue)


async def test_token_protects_everything_but_ping():
    c = Cluster(secret="s3cret")
    try:
        import httpx

        anonymous = httpx.AsyncClient(transport=httpx.ASGITransport(c.apps.marathon), base_url="http://m")
        assert (await anonymous.get("/ping")).status_code == 200
        assert (await anonymous.get("/v2/apps")).status_code == 401
        bearer = await anonymous.get("/v2/apps", headers={"Authorization": "Bearer s3cret"})
        assert bearer.status_code == 200
        mesos = httpx.AsyncClient(transport=httpx.ASGITransport(c.apps.mesos), base_url="http://m")
        assert (await mesos.get("/master/state")).status_code == 401
        assert (await mesos.get("/v1/view")).status_code == 401
        assert (await c.mesos.get("/master/state")).status_code == 200
        await anonymous.aclose()
        await mesos.aclose()
    finally:
        await c.close()


def test_image_without_command_must_be_in_the_image_map():
    from starlette.testclient import TestClient

    from control.agent.images import ImageMap
    from control.http import master_apps
    from control.master import Master

    master = Master(image_map=ImageMap({"nginx*": "@nginx"}))
    client = TestClient(master_apps(master).marathon)
    unknown = {"id": "/thing", "container": {"type": "DOCKER", "docker": {"image": "acme/thing:1"}}}
    resp = client.post("/v2/apps", json=unknown)
    assert resp.status_code == 422
    assert resp.json()["details"][0]["path"] == "/container/docker/image"
    assert "acme/thing:1" in resp.json()["details"][0]["errors"][0]
    with_cmd = {**unknown, "cmd": "sleep 100"}
    assert client.post("/v2/apps", json=with_cmd).status_code == 201
    known = {"id": "/web", "container": {"type": "DOCKER", "docker": {"image": "nginx:1.25"}}}
    assert client.post("/v2/apps", json=known).status_code == 201
