"""Issue 19 acceptance in a real lab: groups in dependency order, versions and rollback, deployment
rollback and cancel, bulk kills — through marathon-python 0.13.0 on the master's Marathon port
and the real ``dcos`` CLI 0.6.1 through Admin Router; and Mesos-DNS's NOERROR for an absent SRV name.
"""

from __future__ import annotations

import collections
import collections.abc
import json
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import LabHandle, wait_until

collections.Iterable = collections.abc.Iterable  # marathon 0.13 predates Python 3.10
from marathon import MarathonApp, MarathonClient  # noqa: E402
from marathon.models.group import MarathonGroup  # noqa: E402

pytestmark = pytest.mark.e2e

SERVE = "exec python3 -m http.server $PORT0"
# Agents check every second from the start; a task is healthy about a second after it serves.
HEALTH = [{"protocol": "HTTP", "path": "/", "portIndex": 0, "intervalSeconds": 1, "timeoutSeconds": 1,
           "delaySeconds": 0, "gracePeriodSeconds": 30, "maxConsecutiveFailures": 0}]


@pytest.fixture(scope="module")
def lab(lab_factory) -> LabHandle:
    return lab_factory(agents=2)


@pytest.fixture
def client(lab: LabHandle) -> MarathonClient:
    lab.restore()
    return MarathonClient(lab.state.master_url, auth_token=lab.state.secret())


def served(app_id: str, **extra: Any) -> MarathonApp:
    return MarathonApp(id=app_id, cmd=SERVE, cpus=0.05, mem=32, health_checks=HEALTH, **extra)


def no_deployments(client: MarathonClient, what: str, timeout: float = 40) -> None:
    wait_until(lambda: not client.list_deployments(), timeout, message=f"{what}: deployments done")


def first_success(task: Any) -> Any:
    return min(r.first_success for r in task.health_check_results if r.first_success)


def test_a_group_starts_in_dependency_order_scales_and_stops_in_reverse(lab: LabHandle, client) -> None:
    group = MarathonGroup(id="/tier", apps=[served("db"), served("api", dependencies=["db"]),
                                            served("web", dependencies=["/tier/api"])])
    created = client.create_group(group)
    assert created["deploymentId"]
    no_deployments(client, "/tier started")
    tasks = {a: client.list_tasks(f"/tier/{a}") for a in ("db", "api", "web")}
    assert all(len(t) == 1 and t[0].health_check_results[0].alive for t in tasks.values())
    # Each app was launched only after the one it depends on had passed a health check.
    assert tasks["api"][0].staged_at >= first_success(tasks["db"][0])
    assert tasks["web"][0].staged_at >= first_success(tasks["api"][0])
    assert {g.id for g in client.list_groups()} >= {"/tier"}
    assert sorted(a.id for a in client.get_group("/tier").apps) == ["/tier/api", "/tier/db", "/tier/web"]

    client.scale_group("/tier", 2)
    no_deployments(client, "/tier scaled")
    assert {a.id: (a.instances, a.tasks_healthy) for a in client.get_group("/tier").apps} == {
        "/tier/api": (2, 2), "/tier/db": (2, 2), "/tier/web": (2, 2)}

    client.delete_group("/tier")
    seen: list[tuple[frozenset[str], frozenset[str]]] = []

    def gone() -> bool:
        apps = frozenset(a.id for a in client.list_apps() if a.id.startswith("/tier/"))
        with_tasks = frozenset(t.app_id for t in client.list_tasks() if t.app_id.startswith("/tier/"))
        if not seen or seen[-1] != (apps, with_tasks):
            seen.append((apps, with_tasks))
        return not apps and not with_tasks
    wait_until(gone, 40, message="/tier stopped")
    order = ["/tier/web", "/tier/api", "/tier/db"]
    for apps, with_tasks in seen:
        # Dependents stop first: an app is dropped only once every app depending on it has no task left.
        assert apps in {frozenset(order[i:]) for i in range(4)}, seen
        for index, app_id in enumerate(order):
            if app_id not in apps:
                assert not with_tasks & set(order[:index]), seen
    with pytest.raises(Exception, match="does not exist"):
        client.get_group("/tier")


def test_versions_rollback_and_bulk_kills(lab: LabHandle, client) -> None:
    client.create_app("/ver", MarathonApp(cmd="exec sleep 3600", cpus=0.05, mem=16, instances=2))
    no_deployments(client, "/ver started")
    first = client.get_app("/ver")
    for cmd in ("exec sleep 3601", "exec sleep 3602"):
        client.update_app("/ver", MarathonApp(cmd=cmd))
        no_deployments(client, f"/ver → {cmd}")
    versions = client.list_versions("/ver")
    assert len(versions) == 3 and versions[-1] == first.version
    assert client.get_version("/ver", first.version).cmd == "exec sleep 3600"
    before = {t.id for t in client.list_tasks("/ver")}
    client.rollback_app("/ver", first.version)
    no_deployments(client, "/ver rolled back")
    now = client.get_app("/ver")
    assert now.cmd == first.cmd and now.instances == 2 and now.version > first.version
    after = {t.id for t in client.list_tasks("/ver")}
    assert len(after) == 2 and not after & before

    replaced = client.kill_tasks("/ver")          # no scale: the tasks are replaced
    assert {t.id for t in replaced} == after
    wait_until(lambda: {t.id for t in client.list_tasks("/ver")}.isdisjoint(after)
               and sum(t.state == "TASK_RUNNING" for t in client.list_tasks("/ver")) == 2,
               30, message="/ver's killed tasks replaced")
    host = client.list_tasks("/ver")[0].host
    on_host = sum(1 for t in client.list_tasks("/ver") if t.host == host)
    scaled = client.kill_tasks("/ver", scale=True, host=host)
    assert scaled["deploymentId"]
    no_deployments(client, "/ver scaled down by the kill")
    assert client.get_app("/ver").instances == 2 - on_host
    assert all(t.host != host for t in client.list_tasks("/ver"))
    client.delete_app("/ver", force=True)


def test_dcos_cli_groups_versions_rollback_and_kill(lab: LabHandle, client, dcos, tmp_path: Path) -> None:
    front = lab.state.front_door
    password = (lab.state.directory / "admin-password").read_text().strip()
    dcos("cluster", "setup", front, "--username", "admin", f"--password={password}")
    group_file = tmp_path / "shop.json"
    group_file.write_text(json.dumps({"id": "/shop", "apps": [
        {"id": "db", "cmd": "exec sleep 3600", "cpus": 0.05, "mem": 16},
        {"id": "web", "cmd": "exec sleep 3600", "cpus": 0.05, "mem": 16, "dependencies": ["db"]}]}))
    try:
        assert "Created deployment" in dcos("marathon", "group", "add", str(group_file)).stdout
        assert "already exists" in dcos("marathon", "group", "add", str(group_file), check=False).stderr
        no_deployments(client, "/shop started")
        listed = dcos("marathon", "group", "list").stdout
        assert "/shop" in listed and "2" in listed.split("/shop", 1)[1].splitlines()[0]
        shown = json.loads(dcos("marathon", "group", "show", "/shop").stdout)
        assert sorted(a["id"] for a in shown["apps"]) == ["/shop/db", "/shop/web"]
        dcos("marathon", "group", "scale", "/shop", "2")
        no_deployments(client, "/shop scaled")
        assert {a["instances"] for a in json.loads(dcos("marathon", "group", "show", "/shop").stdout)["apps"]} == {2}
        with lab.marathon() as direct:
            first = direct.get("/v2/groups/shop/versions").json()[-1]
        then = json.loads(dcos("marathon", "group", "show", f"--group-version={first}", "/shop").stdout)
        assert {a["instances"] for a in then["apps"]} == {1}
        assert "Created deployment" in dcos("marathon", "group", "update", "/shop", 'dependencies=["/shop/db"]').stdout
        assert json.loads(dcos("marathon", "group", "show", "/shop").stdout)["dependencies"] == ["/shop/db"]
        missing = dcos("marathon", "group", "update", "/shop", 'dependencies=["/nowhere"]', check=False)
        assert missing.returncode != 0 and "/nowhere" in missing.stdout + missing.stderr
        versions = json.loads(dcos("marathon", "app", "version", "list", "/shop/web").stdout)
        assert len(versions) == 2

        (task, _other) = client.list_tasks("/shop/db")
        killed = dcos("marathon", "task", "kill", "--scale", task.id).stdout
        assert "Created deployment" in killed
        no_deployments(client, "/shop/db scaled down by the kill")
        assert client.get_app("/shop/db").instances == 1

        # A deployment stuck on tasks that never pass their health check: rolled back by the CLI.
        client.update_app("/shop/web", MarathonApp(health_checks=HEALTH))     # nothing listens: never healthy
        stuck = wait_until(lambda: client.list_deployments(), 20, message="the stuck deployment")[0]
        rolled = json.loads(dcos("marathon", "deployment", "rollback", stuck.id).stdout)
        assert rolled["deploymentId"] != stuck.id
        no_deployments(client, "the rollback")
        assert client.get_app("/shop/web").health_checks == []
        # Another stuck one, cancelled: the app keeps what it was heading for.
        client.update_app("/shop/web", MarathonApp(health_checks=HEALTH))
        other = wait_until(lambda: client.list_deployments(), 20, message="another stuck deployment")[0]
        assert client.delete_deployment(other.id, force=True) == {}
        wait_until(lambda: not client.list_deployments(), 10, message="the cancelled deployment gone")
        assert client.get_app("/shop/web").health_checks
    finally:
        dcos("marathon", "group", "remove", "--force", "/shop", check=False)
    wait_until(lambda: not [a for a in client.list_apps() if a.id.startswith("/shop/")], 40,
               message="/shop removed")


def test_an_absent_srv_name_under_mesos_is_noerror_with_the_soa(lab: LabHandle) -> None:
    out = lab.exec("agent-1", "dig", "+time=2", "+tries=2", "_nosuch._tcp.marathon.mesos", "SRV").stdout
    assert "status: NOERROR" in out and "ANSWER: 0," in out, out
    authority = out.split("AUTHORITY SECTION:", 1)[1].strip().splitlines()[0].split()
    assert authority[0] == "mesos." and authority[3] == "SOA", out
    nx = lab.exec("agent-1", "dig", "+time=2", "+tries=2", "nosuch.marathon.mesos", "A").stdout
    assert "status: NXDOMAIN" in nx, nx
