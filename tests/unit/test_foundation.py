import ipaddress

import pytest
from pydantic import ValidationError
from starlette.testclient import TestClient

from control.auth import token_from_header
from control.http import master_apps
from control.master import Master
from control.registry import AgentRegistration, AgentRegistry
from navstar.lab import operator_link, plan_nodes
from navstar.servers import Listen

REG = {"agent_id": "agent-1", "hostname": "agent-1", "ip": "198.18.0.11",
       "resources": {"cpus": 2, "mem": 1024, "ports": [{"begin": 31000, "end": 32000}]}}


def test_listen_parse():
    assert Listen.parse(":8080") == Listen("0.0.0.0", 8080)
    assert Listen.parse("127.0.0.1:62080") == Listen("127.0.0.1", 62080)
    with pytest.raises(ValueError, match="bad listen"):
        Listen.parse("host:http")


def test_token_header_forms():
    assert token_from_header("token=abc") == "abc"
    assert token_from_header("Bearer abc") == "abc"
    assert token_from_header("Basic abc") is None


def test_lab_plan_follows_design_addresses():
    nodes = plan_nodes("lab", ipaddress.IPv4Network("198.18.0.0/24"), 3)
    assert [(n.name, n.ip) for n in nodes] == [
        ("master", "198.18.0.2"), ("agent-1", "198.18.0.11"), ("agent-2", "198.18.0.12"), ("agent-3", "198.18.0.13")]
    assert len(operator_link("a-rather-long-lab-name")) <= 15


def test_registry_marks_silent_agents_unreachable_and_heartbeat_revives():
    now = [100.0]
    registry = AgentRegistry(clock=lambda: now[0])
    registry.register(AgentRegistration.model_validate(REG))
    now[0] += 10
    assert registry.mark_stale(5) == ["agent-1"]
    assert registry.mark_stale(5) == []
    assert registry.heartbeat("agent-1")
    assert registry.get("agent-1").reachable
    assert not registry.heartbeat("agent-9")


def test_registration_rejects_garbage():
    with pytest.raises(ValidationError):
        AgentRegistration.model_validate({**REG, "ip": "not-an-ip"})
    with pytest.raises(ValidationError):
        AgentRegistration.model_validate({**REG, "surprise": 1})


def test_master_registration_needs_the_secret_and_keeps_state_on_garbage():
    master = Master(secret="s3cret")
    apps = master_apps(master)
    client = TestClient(apps.mesos)
    assert client.post("/v1/agents", json=REG).status_code == 401
    ok = client.post("/v1/agents", json=REG, headers={"Authorization": "token=s3cret"})
    assert ok.status_code == 200
    bad = client.post("/v1/agents", content=b"{nope", headers={"Authorization": "token=s3cret"})
    assert bad.status_code == 400
    invalid = client.post("/v1/agents", json={**REG, "ip": "x"}, headers={"Authorization": "token=s3cret"})
    assert invalid.status_code == 422
    assert invalid.json()["details"][0]["path"] == "/ip"
    agents = client.get("/v1/agents", headers={"Authorization": "Bearer s3cret"}).json()["agents"]
    assert [a["ip"] for a in agents] == ["198.18.0.11"]
    assert TestClient(apps.marathon).get("/ping").text == "pong"


def test_agent_api_refuses_task_ids_that_are_paths(tmp_path):
    from control.agent.api import agent_api
    from control.agent.executor import Executor

    executor = Executor(tmp_path, "127.0.0.1", [].append, user=None)
    client = TestClient(agent_api("agent-1", executor, None))
    for bad in ("/etc", "../../etc", ".hidden", "a/b"):
        resp = client.post("/v1/tasks", json={"task_id": bad, "app_id": "/x", "name": "x", "cmd": "true"})
        assert resp.status_code == 422, bad
    assert not executor.tasks and not any((tmp_path / "sandboxes").iterdir())


def test_lab_names_cannot_reach_into_other_labs():
    from navstar.lab import Lab, LabError, owns_namespace

    assert owns_namespace("lab", "navstar-lab-agent-2")
    assert owns_namespace("lab", "navstar-lab-agent-2-tweb-1234")
    assert not owns_namespace("lab", "navstar-lab-2-master")
    assert not owns_namespace("lab", "navstar-lab-2-agent-1-tweb-1")
    for bad in ("lab-master", "x-agent", "Lab", "a_b", "a--b", "-a", "a" * 21):
        with pytest.raises(LabError):
            Lab(bad)
