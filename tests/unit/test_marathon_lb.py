"""marathon-lb's pure parts (plan, render, slots), the applier against a fake HAProxy, and the
follower against a real-HTTP fake Marathon on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from marathon_lb.applier import Applier
from marathon_lb.fake_marathon import FakeMarathon
from marathon_lb.haproxy import FakeHaproxy
from marathon_lb.marathon import Auth, Follower, MarathonClient, mesos_url_for
from marathon_lb.plan import Plan, Server, backend_name, plan, slot_count
from marathon_lb.render import Settings, assign_slots, render, runtime_commands
from tests.waiting import wait_until_async

RESERVED = (80, 9090)


def task(tid: str, host: str, *ports: int, state: str = "TASK_RUNNING", alive: bool | None = None,
         ips: tuple[str, ...] = ()) -> dict[str, Any]:
    out: dict[str, Any] = {"id": tid, "host": host, "ports": list(ports), "state": state,
                           "ipAddresses": [{"ipAddress": ip, "protocol": "IPv4"} for ip in ips]}
    if alive is not None:
        out["healthCheckResults"] = [{"alive": alive}]
    return out


def host_app(app_id: str, *ports: int, tasks: list[dict[str, Any]] | None = None, group: str | None = "external",
             **labels: str) -> dict[str, Any]:
    all_labels = ({"HAPROXY_GROUP": group} if group else {}) | labels
    return {"id": app_id, "labels": all_labels, "portDefinitions": [{"port": p} for p in ports],
            "tasks": tasks or []}


def names(p: Plan) -> list[str]:
    return [b.name for b in p.backends]


# -- plan: marathon-lb's documented semantics -------------------------------------------------
def test_backend_names_follow_marathon_lb() -> None:
    assert backend_name("/nginx", 10000) == "nginx_10000"
    assert backend_name("/prod/web/api", 10001) == "prod_web_api_10001"


def test_group_selects_apps_and_star_takes_every_app() -> None:
    apps = [host_app("/ext", 10000), host_app("/int", 10001, group="internal"), host_app("/none", 10002, group=None),
            host_app("/both", 10003, group="internal, external")]
    assert names(plan(apps, "external")) == ["both_10003", "ext_10000"]
    assert names(plan(apps, "*")) == ["both_10003", "ext_10000", "int_10001", "none_10002"]


def test_per_port_labels_and_defaults() -> None:
    app = host_app("/web", 10000, 10001, 10002, HAPROXY_0_VHOST="Web.Example, www.example",
                   HAPROXY_1_MODE="http", HAPROXY_1_BALANCE="leastconn", HAPROXY_2_PORT="10500",
                   tasks=[task("t1", "10.0.0.1", 31000, 31001, 31002, alive=True)])
    app["healthChecks"] = [{"protocol": "HTTP", "portIndex": 2, "path": "/"}]
    by_name = {b.name: b for b in plan([app], "external").backends}
    assert set(by_name) == {"web_10000", "web_10001", "web_10500"}
    assert by_name["web_10000"].mode == "http" and by_name["web_10000"].vhosts == ("web.example", "www.example")
    assert by_name["web_10001"].balance == "leastconn"
    assert by_name["web_10500"].port == 10500 and by_name["web_10500"].mode == "http"     # HTTP check → http
    assert by_name["web_10000"].servers == (Server("10.0.0.1", 31000),)
    assert by_name["web_10500"].servers == (Server("10.0.0.1", 31002),)
    tcp = plan([host_app("/db", 10010, tasks=[task("t", "10.0.0.2", 31005)])], "external").backends[0]
    assert (tcp.mode, tcp.balance) == ("tcp", "roundrobin")


def test_servers_are_running_tasks_passing_health_checks() -> None:
    app = host_app("/web", 10000, tasks=[task("ok", "10.0.0.1", 31000, alive=True),
                                         task("sick", "10.0.0.2", 31000, alive=False),
                                         task("unchecked", "10.0.0.3", 31000),
                                         task("staging", "10.0.0.4", 31000, state="TASK_STAGING", alive=True)])
    app["healthChecks"] = [{"protocol": "HTTP", "portIndex": 0}]
    assert plan([app], "external").backends[0].servers == (Server("10.0.0.1", 31000),)
    del app["healthChecks"]
    assert [s.ip for s in plan([app], "external").backends[0].servers] == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]


def test_bridge_tasks_use_the_agent_and_container_network_tasks_their_own_address() -> None:
    bridge = {"id": "/nginx", "labels": {"HAPROXY_GROUP": "external"},
              "container": {"type": "DOCKER", "docker": {"network": "BRIDGE", "portMappings": [
                  {"containerPort": 80, "hostPort": 0, "servicePort": 10000}]}},
              "tasks": [task("b1", "agent-1", 31017, ips=("9.0.1.130",))]}
    overlay = {"id": "/overlay", "labels": {"HAPROXY_GROUP": "external"}, "ipAddress": {"networkName": "dcos"},
               "container": {"type": "DOCKER", "docker": {"network": "USER", "portMappings": [
                   {"containerPort": 8080, "servicePort": 10001}]}},
               "tasks": [task("o1", "agent-2", ips=("9.0.2.5",))]}
    resolve = {"agent-1": "198.18.0.11"}.get
    by_name = {b.name: b for b in plan([bridge, overlay], "external", resolve).backends}
    assert by_name["nginx_10000"].servers == (Server("198.18.0.11", 31017),)
    assert by_name["overlay_10001"].servers == (Server("9.0.2.5", 8080),)
    unresolved = plan([bridge], "external", lambda _h: None)
    assert unresolved.backends[0].servers == () and unresolved.unplaced_tasks == 1


def test_networks_field_generation_is_understood() -> None:
    app = {"id": "/new", "labels": {"HAPROXY_GROUP": "external"}, "networks": [{"mode": "container/bridge"}],
           "container": {"type": "MESOS", "portMappings": [{"containerPort": 80, "servicePort": 10007}]},
           "tasks": [task("n1", "10.0.0.9", 31999)]}
    assert plan([app], "external").backends[0].servers == (Server("10.0.0.9", 31999),)


@pytest.mark.parametrize(("labels", "field"), [
    ({"HAPROXY_0_MODE": "udp"}, "HAPROXY_0_MODE"),
    ({"HAPROXY_0_PORT": "70000"}, "HAPROXY_0_PORT"),
    ({"HAPROXY_0_PORT": "80a"}, "HAPROXY_0_PORT"),
    ({"HAPROXY_0_BALANCE": "roundrobin\n  server evil 1.2.3.4:1"}, "HAPROXY_0_BALANCE"),
    ({"HAPROXY_0_VHOST": "a.example\nfrontend x"}, "HAPROXY_0_VHOST"),
    ({"HAPROXY_0_VHOST": "a.example", "HAPROXY_0_MODE": "tcp"}, "HAPROXY_0_VHOST"),
    ({"HAPROXY_0_PORT": "9090"}, "reserved"),
])
def test_a_bad_label_skips_the_app_and_names_the_label(labels: dict[str, str], field: str) -> None:
    good = host_app("/good", 10001, tasks=[task("g", "10.0.0.1", 31000)])
    bad = host_app("/bad", 10000, tasks=[task("b", "10.0.0.2", 31000)], **labels)
    result = plan([good, bad], "external", reserved_ports=RESERVED)
    assert names(result) == ["good_10001"]
    assert [s.app_id for s in result.skipped] == ["/bad"] and field in result.skipped[0].reason
    text = render(result, assign_slots(result, {}), Settings(Path("/run/x")))
    config = [line for line in text.splitlines() if not line.startswith("#")]     # reasons stay in comments
    assert not [line for line in config if "evil" in line or "frontend x" in line]
    assert all(line.startswith("#") for line in text.splitlines() if "/bad" in line)


def test_a_contested_port_stays_with_the_app_that_holds_it() -> None:
    first = host_app("/zeta", 10000, tasks=[task("z", "10.0.0.1", 31000)])
    second = host_app("/alpha", 10000, tasks=[task("a", "10.0.0.2", 31000)])
    fresh = plan([first, second], "external")
    assert [b.app_id for b in fresh.backends] == ["/alpha"]      # no holder: the lower app id
    assert "already served for /alpha" in fresh.skipped[0].reason
    held = plan([first, second], "external", previous_owners={10000: "/zeta"})
    assert [b.app_id for b in held.backends] == ["/zeta"] and held.skipped[0].app_id == "/alpha"
    vhosts = plan([host_app("/a", 10001, HAPROXY_0_VHOST="x.example"),
                   host_app("/b", 10002, HAPROXY_0_VHOST="x.example")], "external")
    assert names(vhosts) == ["a_10001"] and "vhost x.example" in vhosts.skipped[0].reason


def test_labels_that_are_not_strings_skip_the_app() -> None:
    result = plan([{"id": "/odd", "labels": {"HAPROXY_GROUP": "external", "X": 1}, "portDefinitions": [{"port": 1}]}],
                  "external")
    assert result.backends == () and "labels" in result.skipped[0].reason


# -- render and slots ---------------------------------------------------------------------------
def settings(tmp: Path = Path("/run/mlb")) -> Settings:
    return Settings(tmp)


def test_slots_grow_in_powers_of_two_and_keep_staying_servers_in_place() -> None:
    assert [slot_count(n) for n in (0, 1, 8, 9, 17)] == [8, 8, 8, 16, 32]
    one = plan([host_app("/w", 10000, tasks=[task("a", "10.0.0.1", 1), task("b", "10.0.0.2", 2)])], "external")
    slots = assign_slots(one, {})
    assert slots["w_10000"][:3] == (Server("10.0.0.1", 1), Server("10.0.0.2", 2), None)
    two = plan([host_app("/w", 10000, tasks=[task("b", "10.0.0.2", 2), task("c", "10.0.0.3", 3)])], "external")
    moved = assign_slots(two, slots)
    assert moved["w_10000"][:3] == (Server("10.0.0.3", 3), Server("10.0.0.2", 2), None)
    assert runtime_commands(slots, moved) == ["set server w_10000/srv1 state maint",
                                              "set server w_10000/srv1 addr 10.0.0.3 port 3",
                                              "set server w_10000/srv1 health up",
                                              "set server w_10000/srv1 state ready"]
    assert render(one, slots, settings(), with_servers=False) == render(two, moved, settings(), with_servers=False)


def test_render_has_stats_health_vhost_routing_and_the_servers() -> None:
    p = plan([host_app("/a", 10001, HAPROXY_0_VHOST="a.example", tasks=[task("t", "10.0.0.1", 31000)])], "external")
    text = render(p, assign_slots(p, {}), settings())
    for line in ("bind *:9090", "stats uri /haproxy?stats", "monitor-uri /_haproxy_health_check",
                 "use-service prometheus-exporter", "expose-fd listeners", "frontend marathon_http_in",
                 "acl host_a_example req.hdr(host),field(1,:) -i a.example", "use_backend a_10001 if host_a_example",
                 "frontend a_10001", "bind *:10001", "backend a_10001", "server srv1 10.0.0.1:31000",
                 "server srv2 127.0.0.1:1 disabled", "server status unix@/run/mlb/status.sock"):
        assert line in text, line


# -- the applier against a fake HAProxy ------------------------------------------------------------
async def test_applier_starts_patches_at_run_time_reloads_and_keeps_a_refused_config(tmp_path: Path) -> None:
    fake = FakeHaproxy()
    applier = Applier(fake, Settings(tmp_path))
    one = plan([host_app("/w", 10000, tasks=[task("a", "10.0.0.1", 1)])], "external")
    assert await applier.apply(one) == "start" and fake.started == 1
    assert await applier.apply(one) == "unchanged"
    three = plan([host_app("/w", 10000, tasks=[task(c, f"10.0.0.{i}", i) for i, c in enumerate("abc", 1)])],
                 "external")
    assert await applier.apply(three) == "runtime" and fake.reloads == 0
    assert "set server w_10000/srv3 addr 10.0.0.3 port 3" in fake.commands
    assert "10.0.0.3:3" in (tmp_path / "haproxy.cfg").read_text()
    more = plan([host_app("/w", 10000, tasks=[task(str(i), "10.0.0.1", i) for i in range(1, 10)])], "external")
    assert await applier.apply(more) == "reload" and fake.reloads == 1      # 9 tasks: 16 slots
    running = (tmp_path / "haproxy.cfg").read_text()
    fake.refuse = "[ALERT] no"
    other = plan([host_app("/x", 10001)], "external")
    assert await applier.apply(other) == "refused"
    assert (tmp_path / "haproxy.cfg").read_text() == running and applier.text == running
    assert applier.metrics.refused._value.get() == 1 and applier.status.last_refusal == "[ALERT] no"


async def test_supervise_restarts_haproxy_on_the_current_file(tmp_path: Path) -> None:
    fake = FakeHaproxy()
    applier = Applier(fake, Settings(tmp_path))
    await applier.apply(plan([host_app("/w", 10000)], "external"))
    supervisor = asyncio.create_task(applier.supervise(retry=0.01))
    await asyncio.sleep(0)
    fake.crash()
    await wait_until_async(lambda: fake.running() and fake.started == 2, message="a restart")
    assert applier.metrics.restarts._value.get() == 1
    await applier.stop()
    await asyncio.wait_for(supervisor, 5)


# -- Marathon: URLs, and the follower over real HTTP -------------------------------------------------
def test_mesos_url_beside_marathon() -> None:
    assert mesos_url_for("http://198.18.0.2:8080") == "http://198.18.0.2:5050"
    assert mesos_url_for("http://198.18.0.2/service/marathon/") == "http://198.18.0.2/mesos"


@contextlib.asynccontextmanager
async def served(fake: FakeMarathon) -> AsyncIterator[str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(fake.app(), log_level="warning", lifespan="off"))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    await wait_until_async(lambda: server.started, message="the fake Marathon")
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        server.force_exit = True
        await asyncio.wait_for(serving, 10)


async def test_follower_coalesces_a_burst_of_events_into_few_reads() -> None:
    fake = FakeMarathon([host_app("/w", 10000)], token="t0ken")
    seen: list[list[dict[str, Any]]] = []

    async def on_apps(apps: list[dict[str, Any]]) -> None:
        seen.append(apps)

    async with served(fake) as url:
        client = MarathonClient(url, Auth(token="t0ken"))
        follower = Follower(client, on_apps, Applier(FakeHaproxy(), Settings(Path("/nonexistent"))).metrics,
                            coalesce=0.2)
        running = asyncio.create_task(follower.run())
        await wait_until_async(lambda: len(seen) >= 1 and follower.metrics.connected._value.get() == 1,
                               message="the first read")
        reads = fake.reads
        for index in range(30):
            fake.set_apps([host_app("/w", 10000, tasks=[task(str(index), "10.0.0.1", 31000 + index)])])
        await wait_until_async(lambda: seen[-1][0]["tasks"][0]["ports"] == [31029], message="the last state read")
        assert fake.reads - reads <= 3, "30 events should cost a few reads, not 30"
        running.cancel()
        await client.close()


async def test_follower_keeps_the_last_apps_when_marathon_fails_and_counts_it() -> None:
    fake = FakeMarathon([host_app("/w", 10000)])
    seen: list[int] = []

    async def on_apps(apps: list[dict[str, Any]]) -> None:
        seen.append(len(apps))

    async with served(fake) as url:
        client = MarathonClient(url, Auth(token="wrong"))
        fake.token = "right"       # every call now gets a 401
        metrics = Applier(FakeHaproxy(), Settings(Path("/nonexistent"))).metrics
        follower = Follower(client, on_apps, metrics, coalesce=0.01, max_backoff=0.05)
        running = asyncio.create_task(follower.run())
        await wait_until_async(lambda: metrics.reads.labels("error")._value.get() >= 2, message="failed reads")
        assert seen == []
        client.auth.token = "right"
        await wait_until_async(lambda: seen == [1], message="a read after recovery")
        running.cancel()
        await client.close()


async def test_login_with_credentials_and_again_after_a_401() -> None:
    logins: list[dict[str, Any]] = []

    async def login(request: Request) -> JSONResponse:
        logins.append(json.loads(await request.body()))
        return JSONResponse({"token": f"jwt{len(logins)}"})

    async def apps(request: Request) -> JSONResponse:
        if request.headers.get("authorization") != "token=jwt2":
            return JSONResponse({"message": "expired"}, 401)
        return JSONResponse({"apps": []})

    app = Starlette(routes=[Route("/acs/api/v1/auth/login", login, methods=["POST"]),
                            Route("/service/marathon/v2/apps", apps)])
    client = MarathonClient("http://m/service/marathon", Auth(credentials=("ops", "pw")),
                            transport=httpx.ASGITransport(app))
    assert await client.apps() == []
    assert logins == [{"uid": "ops", "password": "pw"}] * 2
    await client.close()


# -- the master side: Marathon secrets give an app the cluster secret -------------------------------
async def test_cluster_secret_reaches_the_task_env_through_marathon_secrets() -> None:
    from tests.unit.master_harness import running_cluster

    example = json.loads((Path(__file__).resolve().parents[2] / "examples" / "marathon-lb.json").read_text())
    async with running_cluster(1, secret="s3cret") as cluster:
        example["acceptedResourceRoles"] = None
        example["requirePorts"] = False
        resp = await cluster.post_app(example)
        assert resp.status_code == 201, resp.text
        assert resp.json()["env"]["NAVSTAR_TOKEN"] == {"secret": "clusterSecret"}      # not the value
        tasks = list(cluster.scheduler.app_tasks("/marathon-lb"))
        assert tasks and cluster.scheduler.launch_message(tasks[0]).env["NAVSTAR_TOKEN"] == "s3cret"
        other = await cluster.post_app({"id": "/x", "cmd": "true", "cpus": 0.1, "mem": 8,
                                        "env": {"T": {"secret": "s"}}, "secrets": {"s": {"source": "vault/x"}}})
        assert other.status_code == 201
        launched = list(cluster.scheduler.app_tasks("/x"))
        assert launched and "T" not in cluster.scheduler.launch_message(launched[0]).env


# -- the CLI: bad options are refused naming the option ------------------------------------------
@pytest.mark.parametrize(("argv", "option"), [
    (["marathon-lb", "--marathon", "leader.mesos:8080"], "--marathon"),
    (["marathon-lb", "--marathon", "http://m:8080", "--group", "a b"], "--group"),
    (["marathon-lb", "--marathon", "http://m:8080", "--stats-port", "70000"], "--stats-port"),
    (["marathon-lb", "--marathon", "http://m:8080", "--auth-credentials", "nopassword"], "--auth-credentials"),
    (["marathon-lb", "--marathon", "http://m:8080", "--token-file", "/nonexistent/secret"], "--token-file"),
    (["marathon-lb-autoscale", "--marathon", "http://m", "--haproxy", "http://lb:9090", "--apps", "nginx"], "--apps"),
    (["marathon-lb-autoscale", "--marathon", "http://m", "--haproxy", "http://lb:9090", "--apps", "nginx_10000",
      "--target-rps", "0"], "--target-rps"),
    (["marathon-lb-autoscale", "--marathon", "http://m", "--haproxy", "lb:9090", "--apps", "nginx_10000"], "lb:9090"),
])
def test_cli_refuses_bad_options_naming_them(argv: list[str], option: str) -> None:
    from typer.testing import CliRunner

    from navstar.cli import app as cli

    result = CliRunner().invoke(cli, argv)
    assert result.exit_code == 2, result.output
    assert option in result.output
