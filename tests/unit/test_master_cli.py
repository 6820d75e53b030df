"""``navstar app|task|node`` against a served master, as a user types them."""

import json

import pytest
from typer.testing import CliRunner

from navstar.cli import app
from tests.unit.master_harness import ServedMaster
from tests.waiting import wait_until

runner = CliRunner()


@pytest.fixture(scope="module")
def served():
    served = ServedMaster()
    yield served
    served.stop()


def navstar(served, *args):
    return runner.invoke(app, [*args, "--master", served.url, "--token", served.SECRET])


def wait_running(served, app_id, count):
    def running():
        tasks = json.loads(navstar(served, "task", "list", "--app", app_id, "--json").stdout)
        return len(tasks) == count and all(t["state"] == "TASK_RUNNING" for t in tasks) and tasks
    return wait_until(running, message=f"{app_id}: {count} running tasks")


def test_app_lifecycle_through_the_cli(served, tmp_path):
    definition = tmp_path / "web.json"
    definition.write_text(json.dumps({"id": "/shop/web", "cmd": "python3 -m http.server $PORT0", "instances": 2,
                                      "cpus": 0.1, "mem": 32, "constraints": [["hostname", "UNIQUE"]]}))
    added = navstar(served, "app", "add", str(definition))
    assert added.exit_code == 0, added.output
    assert "created /shop/web" in added.stdout
    tasks = wait_running(served, "/shop/web", 2)
    assert {t["slaveId"] for t in tasks} == {"agent-1", "agent-2"}
    listed = navstar(served, "app", "list")
    assert "/shop/web" in listed.stdout and listed.exit_code == 0
    shown = json.loads(navstar(served, "app", "show", "/shop/web", "--json").stdout)
    assert shown["instances"] == 2 and len(shown["tasks"]) == 2
    assert "shop_web." in navstar(served, "app", "show", "shop/web").stdout
    assert navstar(served, "app", "scale", "/shop/web", "1", "--force").exit_code == 0
    wait_running(served, "/shop/web", 1)
    assert "shop_web." in navstar(served, "task", "list").stdout
    nodes = runner.invoke(app, ["node", "list", "--master", served.url, "--mesos", served.mesos_url,
                                "--token", served.SECRET, "--json"])
    assert [n["id"] for n in json.loads(nodes.stdout)] == ["agent-1", "agent-2"]
    assert sum(n["tasks"] for n in json.loads(nodes.stdout)) == 1
    assert navstar(served, "app", "remove", "/shop/web", "--force").exit_code == 0


def test_cli_errors_are_clear(served, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"id": "/bad", "cmd": "true", "healthChecks": [{"portIndex": 4}]}))
    result = navstar(served, "app", "add", str(bad))
    assert result.exit_code == 1
    assert "422" in result.stderr and "/healthChecks(0)/portIndex" in result.stderr
    missing = navstar(served, "app", "show", "/nope")
    assert missing.exit_code == 1 and "404" in missing.stderr
    unreadable = navstar(served, "app", "add", str(tmp_path / "absent.json"))
    assert unreadable.exit_code == 2
    denied = runner.invoke(app, ["app", "list", "--master", served.url, "--token", "wrong"])
    assert denied.exit_code == 1 and "401" in denied.stderr
