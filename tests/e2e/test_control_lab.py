"""Issue 3 acceptance in a real lab: the master, its Marathon API and the executors, driven as a
user would — the ``navstar`` CLI, plain HTTP from the root namespace, the marathon-python client.

One two-agent lab serves the whole module; every test removes its apps so the next one starts clean,
and before each test the lab is restored (dead node processes restarted, every agent reachable).
"""

from __future__ import annotations

import collections
import collections.abc
import contextlib
import json
import os
import signal
import threading
from collections.abc import Iterator

import httpx
import pytest

from navstar.lab import process_alive
from tests.e2e.conftest import REPO, LabHandle, navstar, pid_running, wait_until

collections.Iterable = collections.abc.Iterable  # marathon 0.13 predates Python 3.10
from marathon import MarathonApp, MarathonClient  # noqa: E402

HTTP_SERVER = "python3 -m http.server $PORT0"


@pytest.fixture(scope="module")
def shared_lab(lab_factory) -> LabHandle:
    return lab_factory(agents=2)


@pytest.fixture
def lab(shared_lab: LabHandle) -> LabHandle:
    shared_lab.restore()
    return shared_lab


@contextlib.contextmanager
def removed_afterwards(lab: LabHandle, *app_ids: str) -> Iterator[None]:
    """Removes the apps (CLI, ``--force``) and waits until the master has forgotten them."""
    try:
        yield
    finally:
        for app_id in app_ids:
            lab.cli("app", "remove", app_id, "--force")
        with lab.marathon() as client:
            for app_id in app_ids:
                wait_until(lambda a=app_id: client.get(f"/v2/apps/{a.strip('/')}").status_code == 404,
                           timeout=20, message=f"{app_id} removed")


def add_with_cli(lab: LabHandle, tmp_path, app: dict) -> None:
    path = tmp_path / f"{app['id'].strip('/').replace('/', '_')}.json"
    path.write_text(json.dumps(app))
    added = lab.cli("app", "add", str(path))
    assert added.returncode == 0, added.stdout + added.stderr
    assert f"created {app['id']}" in added.stdout


def answers_http(url: str, timeout: float = 15) -> httpx.Response:
    """The first 200 from ``url`` (a task's server may still be starting when it is RUNNING)."""
    return wait_until(lambda: (r := httpx.get(url, timeout=2)).status_code == 200 and r,
                      timeout=timeout, message=f"HTTP 200 from {url}")


def kill_node_process(lab: LabHandle, node: str) -> int:
    pid = lab.state.node(node).pid
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not process_alive(pid), timeout=5, message=f"{node} (pid {pid}) to die")
    return pid


class EventStream:
    """``GET /v2/events`` read on a thread, as a Marathon event subscriber (marathon-lb) would."""

    def __init__(self, lab: LabHandle) -> None:
        state = lab.state
        self.events: list[dict] = []
        self._client = httpx.Client(base_url=state.master_url, timeout=httpx.Timeout(5, read=None),
                                    headers={"Authorization": f"token={state.secret()}",
                                             "Accept": "text/event-stream"})
        self.content_type = ""
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        self.wait_for(lambda e: e["eventType"] == "event_stream_attached", "the stream to attach")

    def _read(self) -> None:
        with contextlib.suppress(httpx.HTTPError, RuntimeError, ValueError):
            with self._client.stream("GET", "/v2/events") as response:
                self.content_type = response.headers.get("content-type", "")
                for line in response.iter_lines():
                    if line.startswith("data:"):
                        self.events.append(json.loads(line[5:]))

    def wait_for(self, match, what: str, timeout: float = 20) -> dict:
        return wait_until(lambda: next((e for e in list(self.events) if match(e)), None), timeout,
                          message=f"an event: {what}")

    def close(self) -> None:
        self._client.close()


# -- acceptance ---------------------------------------------------------------------------------
def test_cli_unique_http_servers_run_on_both_agents(lab, tmp_path):
    app = {"id": "/web", "cmd": HTTP_SERVER, "instances": 2, "cpus": 0.1, "mem": 64,
           "constraints": [["hostname", "UNIQUE"]]}
    with removed_afterwards(lab, "/web"):
        add_with_cli(lab, tmp_path, app)
        tasks = lab.running("/web", 2)     # how fast is bench/master_scheduling.py's business
        assert sorted(t["slaveId"] for t in tasks) == ["agent-1", "agent-2"]
        for task in tasks:
            agent_ip = lab.ip(task["slaveId"])
            assert [a["ipAddress"] for a in task["ipAddresses"]] == [agent_ip]
            (port,) = task["ports"]
            assert 31000 <= port <= 32000
            # From the root namespace, over the underlay, as the operator.
            assert "Directory listing" in answers_http(f"http://{agent_ip}:{port}/").text

        listed = lab.cli("task", "list", "--app", "/web", "--json")
        assert listed.returncode == 0, listed.stderr
        assert {t["id"] for t in json.loads(listed.stdout)} == {t["id"] for t in tasks}
        apps = json.loads(lab.cli("app", "list", "--json").stdout)
        assert [(a["id"], a["instances"], a["tasksRunning"]) for a in apps] == [("/web", 2, 2)]


def test_seed_nginx_marathon_lb_runs_unmodified(lab):
    with removed_afterwards(lab, "/nginx"):
        added = lab.cli("app", "add", str(REPO / "examples" / "nginx-marathon-lb.json"))
        assert added.returncode == 0, added.stdout + added.stderr
        (task,) = lab.running("/nginx", 1, timeout=40, healthy=True)
        with lab.marathon() as client:
            app = client.get("/v2/apps/nginx").json()["app"]
        assert app["labels"] == {"HAPROXY_GROUP": "external"}
        assert app["container"]["docker"]["network"] == "BRIDGE"
        assert app["tasksHealthy"] == 1
        (host_port,) = task["ports"]
        agent = task["slaveId"]
        other = next(a for a in lab.agents if a != agent)
        url = f"http://{lab.ip(agent)}:{host_port}/"
        assert "Welcome to nginx" in answers_http(url).text
        # BRIDGE: the host port forwards to container port 80 for other nodes too.
        fetched = lab.exec(other, "curl", "-sf", "-m", "5", url)
        assert fetched.returncode == 0 and "Welcome to nginx" in fetched.stdout, fetched.stderr


def test_master_restart_keeps_apps_and_restarts_no_healthy_task(lab):
    app = {"id": "/keep/web", "cmd": HTTP_SERVER, "instances": 2, "cpus": 0.1, "mem": 64,
           "constraints": [["hostname", "UNIQUE"]],
           "healthChecks": [{"protocol": "HTTP", "path": "/", "portIndex": 0, "gracePeriodSeconds": 10,
                             "intervalSeconds": 1, "timeoutSeconds": 2, "maxConsecutiveFailures": 3}]}
    with removed_afterwards(lab, "/keep/web"):
        lab.add_app(app)
        lab.running("/keep/web", 2, timeout=20, healthy=True)

        def snapshot() -> dict[str, tuple[str, int, int | None]]:
            return {t["id"]: (t["slaveId"], t["ports"][0], lab.listener_pid(t["slaveId"], t["ports"][0]))
                    for t in lab.tasks("/keep/web")}

        before = snapshot()
        assert len(before) == 2 and all(pid for _, _, pid in before.values()), before
        with lab.marathon() as client:
            version = client.get("/v2/apps/keep/web").json()["app"]["version"]

        unknown = navstar("lab", "restart", "--name", lab.name, "agent-9")
        assert unknown.returncode == 2 and "agent-1" in unknown.stderr, unknown.stderr

        old_pid = kill_node_process(lab, "master")
        restarted = navstar("lab", "restart", "--name", lab.name, "master")
        assert restarted.returncode == 0, restarted.stdout + restarted.stderr
        assert lab.state.master.pid != old_pid

        with lab.marathon() as client:
            app_after = client.get("/v2/apps/keep/web").json()["app"]
        assert app_after["version"] == version and app_after["instances"] == 2
        assert {t["id"] for t in lab.running("/keep/web", 2, timeout=10, healthy=True)} == set(before)
        # Past the agents' re-registration and the master's agent timeout (5 s in the lab): every
        # agent heard from again more than that timeout after the restart (in the master's clock).
        # Still the same tasks, the same processes.
        def agents(client) -> list[dict]:
            return client.get("/v1/agents").json()["agents"]

        with lab.mesos() as client:
            restarted_at = max(a["last_seen"] for a in agents(client))
            wait_until(lambda: all(a["reachable"] and a["last_seen"] > restarted_at + 5.0 for a in agents(client)),
                       message="every agent heard from past the master's agent timeout")
        assert snapshot() == before
        assert all(t["state"] == "TASK_RUNNING" for t in lab.tasks("/keep/web"))


def test_master_killed_mid_deployment_completes_it_after_restart(lab):
    # The servers start late, so the deployment waits on health checks while the master dies.
    app = {"id": "/late", "cmd": "sleep 5; exec " + HTTP_SERVER, "instances": 2, "cpus": 0.1, "mem": 64,
           "healthChecks": [{"protocol": "HTTP", "path": "/", "portIndex": 0, "gracePeriodSeconds": 30,
                             "intervalSeconds": 1, "timeoutSeconds": 1, "maxConsecutiveFailures": 3}]}
    with removed_afterwards(lab, "/late"), lab.marathon() as client:
        created = client.post("/v2/apps", json=app)
        assert created.status_code == 201, created.text
        deployment_id = created.json()["deployments"][0]["id"]
        launched = {t["id"] for t in lab.running("/late", 2, timeout=10)}
        assert deployment_id in [d["id"] for d in client.get("/v2/deployments").json()], "finished too early"

        kill_node_process(lab, "master")
        restarted = navstar("lab", "restart", "--name", lab.name, "master")
        assert restarted.returncode == 0, restarted.stdout + restarted.stderr

        wait_until(lambda: deployment_id not in [d["id"] for d in client.get("/v2/deployments").json()],
                   timeout=20, message="the deployment to finish")
        assert {t["id"] for t in lab.running("/late", 2, healthy=True)} == launched


def test_unreachable_agent_loses_its_task_and_it_is_replaced_elsewhere(lab):
    stream = EventStream(lab)
    with removed_afterwards(lab, "/solo"):
        lab.add_app({"id": "/solo", "cmd": HTTP_SERVER, "instances": 1, "cpus": 0.1, "mem": 64,
                     # Replaced as soon as its agent is unreachable (Marathon's default waits 300 s).
                     "unreachableStrategy": {"inactiveAfterSeconds": 0, "expungeAfterSeconds": 0}})
        (task,) = lab.running("/solo", 1)
        killed, (port,) = task["slaveId"], task["ports"]
        survivor = next(a for a in lab.agents if a != killed)
        # TASK_RUNNING means started, not yet listening: wait for the server's socket.
        orphan_pid = wait_until(lambda: lab.listener_pid(killed, port), timeout=20,
                                message="the task's server listening")
        kill_node_process(lab, killed)   # the agent only: its task keeps running
        try:
            lost = stream.wait_for(lambda e: e["eventType"] == "status_update_event" and e["taskId"] == task["id"]
                                   and e["taskStatus"] in ("TASK_LOST", "TASK_UNREACHABLE"),
                                   "the task lost", timeout=30)
            assert lost["slaveId"] == killed and lost["appId"] == "/solo"
            (replacement,) = wait_until(
                lambda: [t for t in lab.tasks("/solo") if t["state"] == "TASK_RUNNING"] or None,
                timeout=20, message="a replacement task")
            assert replacement["id"] != task["id"] and replacement["slaveId"] == survivor
            answers_http(f"http://{lab.ip(survivor)}:{replacement['ports'][0]}/")
            stream.wait_for(lambda e: e["eventType"] == "status_update_event"
                            and e["taskId"] == replacement["id"] and e["taskStatus"] == "TASK_RUNNING",
                            "the replacement running")
        finally:
            # The agent returns (also after a failure, so the lab stays whole for the next test).
            back = navstar("lab", "restart", "--name", lab.name, killed)
            stream.close()
        assert back.returncode == 0, back.stdout + back.stderr
        # It re-registers and reconciles: the task the master gave up on is ended.
        wait_until(lambda: not pid_running(orphan_pid), timeout=20, message="the orphaned task to end")
        assert [t["id"] for t in lab.tasks("/solo")] == [replacement["id"]]


def test_event_stream_reports_a_deployment(lab):
    stream = EventStream(lab)
    try:
        assert stream.content_type.startswith("text/event-stream")
        with removed_afterwards(lab, "/evt"), lab.marathon() as client:
            created = client.post("/v2/apps", json={"id": "/evt", "cmd": "sleep 600", "cpus": 0.1, "mem": 32})
            assert created.status_code == 201, created.text
            deployment_id = created.json()["deployments"][0]["id"]
            posted = stream.wait_for(lambda e: e["eventType"] == "api_post_event", "api_post_event")
            assert posted["appDefinition"]["id"] == "/evt"
            running = stream.wait_for(lambda e: e["eventType"] == "status_update_event" and e["appId"] == "/evt"
                                      and e["taskStatus"] == "TASK_RUNNING", "the task running")
            assert running["slaveId"] in lab.agents and running["taskId"].startswith("evt.")
            stream.wait_for(lambda e: e["eventType"] == "deployment_success" and e["id"] == deployment_id,
                            "deployment_success")
    finally:
        stream.close()


def test_marathon_python_client_against_the_lab(lab):
    client = MarathonClient(lab.state.master_url, auth_token=lab.state.secret())
    with removed_afterwards(lab, "/py/web"):
        created = client.create_app("/py/web", MarathonApp(cmd=HTTP_SERVER, instances=1, cpus=0.1, mem=32))
        assert created.id == "/py/web"
        assert "/py/web" in [a.id for a in client.list_apps()]
        wait_until(lambda: [t for t in client.list_tasks("/py/web") if t.state == "TASK_RUNNING"],
                   message="a running task")
        client.scale_app("/py/web", instances=2)
        tasks = wait_until(lambda: (ts := [t for t in client.list_tasks("/py/web") if t.state == "TASK_RUNNING"])
                           and len(ts) == 2 and ts, message="2 running tasks")
        for task in tasks:
            answers_http(f"http://{lab.ip(task.slave_id)}:{task.ports[0]}/")
        assert client.get_app("/py/web").instances == 2
        client.delete_app("/py/web", force=True)
        wait_until(lambda: "/py/web" not in [a.id for a in client.list_apps()], message="the app gone")
