"""Groups, versions and bulk kills through real clients against a served master: marathon-python
0.13.0's methods and ``navstar app group|version`` (issue 19)."""

from __future__ import annotations

import collections
import collections.abc
import json

import pytest
from typer.testing import CliRunner

from navstar.cli import app as navstar_app
from tests.unit.master_harness import ServedMaster
from tests.waiting import wait_until

collections.Iterable = collections.abc.Iterable  # marathon 0.13 predates Python 3.10
from marathon import MarathonApp, MarathonClient  # noqa: E402
from marathon.exceptions import MarathonHttpError, NotFoundError  # noqa: E402
from marathon.models.group import MarathonGroup  # noqa: E402

runner = CliRunner()


@pytest.fixture(scope="module")
def served():
    served = ServedMaster()
    yield served
    served.stop()


def settled(client: MarathonClient, group_prefix: str) -> None:
    wait_until(lambda: not [d for d in client.list_deployments()
                            if any(a.startswith(group_prefix) for a in d.affected_apps)],
               message=f"{group_prefix}'s deployments to finish")


def test_marathon_python_groups_versions_and_kills(served):
    client = MarathonClient(served.url, auth_token=ServedMaster.SECRET)
    group = MarathonGroup(id="/mp", apps=[
        MarathonApp(id="db", cmd="sleep 100", cpus=0.05, mem=16),
        MarathonApp(id="api", cmd="sleep 100", cpus=0.05, mem=16, dependencies=["db"])])
    created = client.create_group(group)
    assert set(created) == {"version", "deploymentId"}
    settled(client, "/mp")
    assert "/mp" in [g.id for g in client.list_groups()]
    got = client.get_group("/mp")
    assert sorted(a.id for a in got.apps) == ["/mp/api", "/mp/db"]
    assert next(a for a in got.apps if a.id == "/mp/api").dependencies == ["/mp/db"]
    assert set(client.scale_group("/mp", 2)) == {"version", "deploymentId"}
    settled(client, "/mp")
    assert {a.id: a.instances for a in client.get_group("/mp").apps} == {"/mp/api": 2, "/mp/db": 2}

    group_versions = client.session.get(f"{served.url}/v2/groups/mp/versions",
                                        headers={"Authorization": f"token={ServedMaster.SECRET}"}).json()
    assert len(group_versions) == 2 and client.get_group("/mp").version == group_versions[0]
    client.rollback_group("/mp", group_versions[-1], force=True)
    settled(client, "/mp")
    assert {a.id: a.instances for a in client.get_group("/mp").apps} == {"/mp/api": 1, "/mp/db": 1}
    client.scale_group("/mp", 2)
    settled(client, "/mp")
    versions = client.list_versions("/mp/db")
    assert len(versions) == 4 and client.get_version("/mp/db", versions[-1]).instances == 1
    killed = client.kill_tasks("/mp/db", scale=True)
    assert set(killed) == {"version", "deploymentId"}
    wait_until(lambda: client.get_app("/mp/db").instances == 0 and not client.list_tasks("/mp/db"),
               message="db scaled to 0 by the kill")
    tasks = client.list_tasks("/mp/api")
    replaced = client.kill_tasks("/mp/api")
    assert sorted(t.id for t in replaced) == sorted(t.id for t in tasks)
    assert client.kill_given_tasks([tasks[0].id], scale=True) is True
    with pytest.raises(NotFoundError):
        client.get_version("/mp/db", "2001-01-01T00:00:00.000Z")
    with pytest.raises(MarathonHttpError):
        client.create_group(MarathonGroup(id="/cyc", apps=[MarathonApp(id="a", cmd="true", dependencies=["b"]),
                                                           MarathonApp(id="b", cmd="true", dependencies=["a"])]))
    client.reset_delay("/mp/api")
    assert set(client.delete_group("/mp")) == {"version", "deploymentId"}
    wait_until(lambda: "/mp" not in [g.id for g in client.list_groups()], message="the group gone")
    with pytest.raises(NotFoundError):
        client.get_group("/mp")


def navstar(served, *args):
    return runner.invoke(navstar_app, [*args, "--master", served.url, "--token", ServedMaster.SECRET])


def test_navstar_app_group_and_version_commands(served, tmp_path):
    definition = tmp_path / "shop.json"
    definition.write_text(json.dumps({"id": "/shop", "apps": [
        {"id": "db", "cmd": "sleep 100", "cpus": 0.05, "mem": 16},
        {"id": "web", "cmd": "sleep 100", "cpus": 0.05, "mem": 16, "dependencies": ["db"]}]}))
    added = navstar(served, "app", "group", "add", str(definition))
    assert added.exit_code == 0 and "group created, deployment" in added.stdout, added.output
    wait_until(lambda: len(json.loads(navstar(served, "task", "list", "--json").stdout)) >= 2,
               message="the shop's tasks")
    listed = navstar(served, "app", "group", "list")
    assert "/shop" in listed.stdout
    shown = navstar(served, "app", "group", "show", "/shop")
    assert "/shop/web" in shown.stdout and "/shop/db" in shown.stdout
    assert json.loads(navstar(served, "app", "group", "show", "/shop", "--json").stdout)["id"] == "/shop"
    again = navstar(served, "app", "group", "add", str(definition))
    assert again.exit_code == 1 and "already created" in again.output
    scaled = navstar(served, "app", "group", "scale", "/shop", "2", "--force")
    assert scaled.exit_code == 0 and "scaling /shop by 2" in scaled.stdout
    versions = json.loads(navstar(served, "app", "version", "list", "/shop/web", "--json").stdout)
    assert len(versions) == 2
    first = json.loads(navstar(served, "app", "version", "show", "/shop/web", versions[-1]).stdout)
    assert first["instances"] == 1
    back = navstar(served, "app", "version", "rollback", "/shop/web", versions[-1], "--force")
    assert back.exit_code == 0 and "rolling /shop/web back" in back.stdout
    missing = navstar(served, "app", "version", "rollback", "/shop/web", "2001-01-01T00:00:00.000Z", "--force")
    assert missing.exit_code == 1 and "2001-01-01" in missing.output
    assert navstar(served, "app", "group", "remove", "/shop", "--force").exit_code == 0
    assert navstar(served, "app", "group", "show", "/shop").exit_code == 1
