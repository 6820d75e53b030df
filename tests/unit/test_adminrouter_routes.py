"""/service/<name>/ routes from the cluster view, and the nginx configuration rendered from them."""

from __future__ import annotations

import pytest

from adminrouter.config import Settings, render
from adminrouter.routes import ServiceRoute, service_routes
from cluster.view import ClusterView, TaskInfo, TaskPort

pytestmark = pytest.mark.unit


def task(task_id: str, app_id: str, labels: dict[str, str], state: str = "TASK_RUNNING", agent_ip: str = "10.0.0.1",
         ports: tuple[int, ...] = (31001, 31002), healthy: bool | None = None) -> TaskInfo:
    return TaskInfo(task_id=task_id, app_id=app_id, name=app_id.strip("/"), agent_id="a", agent_ip=agent_ip,
                    state=state, healthy=healthy, ports=[TaskPort(host_port=p) for p in ports], labels=labels)


def view(*tasks: TaskInfo) -> ClusterView:
    return ClusterView(version=3, tasks=list(tasks))


def test_a_labelled_app_is_a_service_at_its_port_index_and_scheme() -> None:
    routes, problems = service_routes(view(
        task("t1", "/hello", {"DCOS_SERVICE_NAME": "hello", "DCOS_SERVICE_PORT_INDEX": "1"}),
        task("t2", "/hello", {"DCOS_SERVICE_NAME": "hello", "DCOS_SERVICE_PORT_INDEX": "1"}, agent_ip="10.0.0.2"),
        task("t3", "/tls", {"DCOS_SERVICE_NAME": "tls", "DCOS_SERVICE_SCHEME": "https"}),
        task("t4", "/plain", {}),
    ))
    assert problems == []
    assert routes == [ServiceRoute("hello", "http", ("10.0.0.1:31002", "10.0.0.2:31002"), "/hello"),
                      ServiceRoute("tls", "https", ("10.0.0.1:31001",), "/tls")]


def test_unhealthy_and_starting_tasks_are_not_upstreams_while_a_healthy_one_exists() -> None:
    labels = {"DCOS_SERVICE_NAME": "web"}
    routes, _ = service_routes(view(task("t1", "/web", labels, healthy=False),
                                    task("t2", "/web", labels, agent_ip="10.0.0.2", healthy=True),
                                    task("t3", "/web", labels, state="TASK_STAGING", agent_ip="10.0.0.3")))
    assert routes[0].servers == ("10.0.0.2:31001",)
    routes, _ = service_routes(view(task("t3", "/web", labels, state="TASK_STAGING")))
    assert routes == [ServiceRoute("web", "http", (), "/web")]


def test_labels_that_cannot_be_served_are_reported() -> None:
    routes, problems = service_routes(view(
        task("t1", "/a", {"DCOS_SERVICE_NAME": "Bad Name"}),
        task("t2", "/b", {"DCOS_SERVICE_NAME": "marathon"}),
        task("t3", "/c", {"DCOS_SERVICE_NAME": "c", "DCOS_SERVICE_SCHEME": "gopher"}),
        task("t4", "/d", {"DCOS_SERVICE_NAME": "dup"}),
        task("t5", "/e", {"DCOS_SERVICE_NAME": "dup"}),
    ))
    assert [r.name for r in routes] == ["dup"] and routes[0].app_id == "/d"
    assert len(problems) == 4 and any("taken by /d" in p for p in problems)


def test_render_puts_each_service_behind_the_token_and_keeps_upstream_keepalive() -> None:
    text = render(Settings(listen="198.18.0.2:80", run_dir="/run/ar", secret="s3cret"),
                  [ServiceRoute("hello", "http", ("10.0.0.1:31001",), "/hello"),
                   ServiceRoute("idle", "http", (), "/idle")])
    hello = text.split("location /service/hello/ {")[1].split("}")[0]
    assert "auth_request /internal/auth;" in hello and "proxy_pass http://service_" in hello
    assert "server 10.0.0.1:31001 max_fails=0;" in text
    assert "has no running task" in text.split("location /service/idle/ {")[1].split("}")[0]
    marathon = text.split("location /marathon/ {")[1].split("location /marathon/v2/events")[0]
    assert 'proxy_set_header Authorization "token=s3cret";' in marathon and 'Connection "";' in marathon
    assert "listen 198.18.0.2:80" in text and "${" not in text
    prometheus = text.split("location /prometheus/ {")[1].split("}")[0]
    assert "auth_request /internal/auth;" in prometheus and "proxy_pass http://prometheus/;" in prometheus
    assert "server 127.0.0.1:9090 max_fails=0;" in text
    validator = text.split("location = /internal/auth {")[1].split("}")[0]
    assert "proxy_set_header Authorization $acs_authorization;" in validator    # header, else the cookie


def test_render_refuses_what_would_break_the_configuration() -> None:
    with pytest.raises(ValueError, match="secret"):
        render(Settings(listen="0.0.0.0:80", run_dir="/run/ar", secret='x"; evil'), [])
