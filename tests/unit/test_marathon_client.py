"""The PyPI ``marathon`` client (0.13.0) against the master served by uvicorn on 127.0.0.1."""

import collections
import collections.abc
import threading

import httpx
import pytest

from tests.unit.master_harness import ServedMaster
from tests.waiting import wait_until

collections.Iterable = collections.abc.Iterable  # marathon 0.13 predates Python 3.10
from marathon import MarathonApp, MarathonClient  # noqa: E402
from marathon.exceptions import MarathonHttpError, NotFoundError  # noqa: E402

SECRET = ServedMaster.SECRET


@pytest.fixture(scope="module")
def served():
    served = ServedMaster()
    yield served
    served.stop()


def wait_for(predicate):
    wait_until(predicate, message="the master to get there")


def test_marathon_python_round_trip(served):
    client = MarathonClient(served.url, auth_token=SECRET)
    assert client.ping().strip() in (b"pong", "pong")
    others = {a.id for a in client.list_apps()}        # the master is module-wide: other tests' apps
    assert "/shop/web" not in others
    created = client.create_app("/shop/web", MarathonApp(cmd="python3 -m http.server $PORT0", instances=2,
                                                         cpus=0.1, mem=32, constraints=[["hostname", "UNIQUE"]]))
    assert created.id == "/shop/web" and created.instances == 2
    assert {a.id for a in client.list_apps()} == others | {"/shop/web"}
    wait_for(lambda: len(client.list_tasks("/shop/web")) == 2
             and all(t.state == "TASK_RUNNING" for t in client.list_tasks("/shop/web")))
    tasks = client.list_tasks("/shop/web")
    assert {t.slave_id for t in tasks} == {"agent-1", "agent-2"}
    assert all(t.started_at is not None and t.ports for t in tasks)
    wait_for(lambda: not [d for d in client.list_deployments() if "/shop/web" in d.affected_apps])
    app = client.get_app("/shop/web")
    assert app.tasks_running == 2 and app.constraints[0].operator == "UNIQUE"
    client.scale_app("/shop/web", instances=1)
    wait_for(lambda: len(client.list_tasks("/shop/web")) == 1)
    assert client.get_app("/shop/web").instances == 1
    assert client.get_info().name == "marathon"
    assert [t.app_id for t in client.list_tasks()].count("/shop/web") == 1
    client.delete_app("/shop/web")
    wait_for(lambda: "/shop/web" not in {a.id for a in client.list_apps()})
    with pytest.raises(NotFoundError):
        client.get_app("/shop/web")


def test_client_sees_422_details_and_events_stream(served):
    client = MarathonClient(served.url, auth_token=SECRET)
    with pytest.raises(MarathonHttpError) as error:
        client.create_app("/bad", MarathonApp(cmd="true", health_checks=[{"protocol": "HTTP", "portIndex": 5}]))
    assert error.value.status_code == 422
    assert error.value.error_message == "Object is not valid"
    assert error.value.error_details[0]["path"] == "/healthChecks(0)/portIndex"
    # Server-sent events over real HTTP.
    seen: list[str] = []
    with httpx.Client(base_url=served.url, headers={"Authorization": f"Bearer {SECRET}"}, timeout=5) as http:
        with http.stream("GET", "/v2/events", headers={"Accept": "text/event-stream"}) as stream:
            lines = stream.iter_lines()
            assert next(lines).startswith("event: event_stream_attached")
            threading.Thread(target=lambda: client.create_app("/ev", MarathonApp(cmd="true", cpus=0.1, mem=16)),
                             daemon=True).start()
            for line in lines:
                if line.startswith("event: "):
                    seen.append(line.removeprefix("event: "))
                if "deployment_success" in seen:
                    break
    assert {"api_post_event", "deployment_info", "status_update_event", "deployment_success"} <= set(seen)
    client.delete_app("/ev", force=True)
