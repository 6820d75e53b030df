"""Public agents: resources reserved for ``slave_public`` (Mesos ``--default_role``) are offered only
to that role, and Marathon places an app there only when its ``acceptedResourceRoles`` names it —
through the DRF allocator, the matcher and the queue's explanation, over fake agents."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from control.cli import node_type
from control.drf import Allocator, may_use
from control.marathon_models import AppInvalid, parse_app
from control.placement import AgentSlot, role_refusal
from tests.unit.master_harness import Cluster, registration

PUBLIC = "slave_public"


def public_registration(index: int, **kwargs: Any) -> dict[str, Any]:
    """As the lab registers ``public-agent-k``: role slave_public, attribute public_ip:true."""
    reg = registration(index, **kwargs)
    reg.update(agent_id=f"public-agent-{index}", hostname=f"public-agent-{index}", ip=f"198.18.0.{30 + index}",
               role=PUBLIC, attributes={"public_ip": "true"})
    return reg


@pytest.fixture
async def cluster():
    c = Cluster()
    await c.register(1)
    await c.register(2)
    resp = await c.mesos.post("/v1/agents", json=public_registration(1))
    assert resp.status_code == 200, resp.text
    await c.settle(1)
    yield c
    await c.close()


def hosts(cluster: Cluster, app_id: str) -> Counter:
    return Counter(t.agent_id for t in cluster.running(app_id))


# -- the allocator --------------------------------------------------------------------------
def test_reserved_agent_is_offered_only_to_its_role_and_the_roles_below_it():
    allocator = Allocator(default_refuse_seconds=0)
    allocator.add_agent("private", {"cpus": 2, "mem": 1024})
    allocator.add_agent("public", {"cpus": 2, "mem": 1024}, role=PUBLIC)
    allocator.add_framework("marathon", "*")
    offers = allocator.allocate(0.0)
    assert {(o.framework_id, o.agent_id) for o in offers} == {("marathon", "private")}
    for offer in offers:
        allocator.decline(offer, 0.0)
    allocator.add_framework("marathon-slave_public", PUBLIC)
    allocator.add_framework("marathon-slave_public|edge", f"{PUBLIC}/edge")
    allocator.suppress("marathon")

    def offered(framework_id: str) -> set[str]:
        others = {"marathon-slave_public", "marathon-slave_public|edge"} - {framework_id}
        for other in others:
            allocator.suppress(other)
        allocator.revive(framework_id)
        offers = allocator.allocate(0.0)
        for offer in offers:
            allocator.decline(offer, 0.0)
        return {offer.agent_id for offer in offers if offer.framework_id == framework_id}

    # The public role and the role below it take the reserved agent, and unreserved ones too.
    assert offered("marathon-slave_public") == {"private", "public"}
    assert offered("marathon-slave_public|edge") == {"private", "public"}
    assert offered("marathon") == {"private"}
    assert allocator.reserved_for("public") == PUBLIC and allocator.reserved_for("private") == "*"


def test_may_use_follows_mesos_hierarchical_reservations():
    assert may_use("*", "*") and may_use("dev", "*")
    assert may_use(PUBLIC, PUBLIC) and may_use(f"{PUBLIC}/x", PUBLIC)
    assert not may_use("*", PUBLIC) and not may_use("slave_publicity", PUBLIC) and not may_use("dev", PUBLIC)


def test_bad_agent_role_changes_nothing():
    allocator = Allocator()
    with pytest.raises(ValueError, match="role"):
        allocator.add_agent("a", {"cpus": 1, "mem": 64}, role="a//b")
    with pytest.raises(KeyError):
        allocator.free("a")


def test_role_refusal_by_accepted_resource_roles():
    public = AgentSlot("p", "p", {"public_ip": "true"}, [], role=PUBLIC)
    private = AgentSlot("a", "a", {}, [])
    default = parse_app({"id": "/d", "cmd": "true"})
    edge = parse_app({"id": "/e", "cmd": "true", "acceptedResourceRoles": [PUBLIC]})
    both = parse_app({"id": "/b", "cmd": "true", "acceptedResourceRoles": [PUBLIC, "*"]})
    assert role_refusal(default, private) is None
    assert "reserved for role 'slave_public'" in (role_refusal(default, public) or "")
    assert role_refusal(edge, public) is None and "unreserved" in (role_refusal(edge, private) or "")
    assert role_refusal(both, public) is None and role_refusal(both, private) is None
    assert (default.effective_role, edge.effective_role, both.effective_role) == ("*", PUBLIC, PUBLIC)


@pytest.mark.parametrize("body, message", [
    ({"acceptedResourceRoles": []}, "must not be empty"),
    ({"acceptedResourceRoles": ["a b"]}, "not a valid Mesos role"),
    ({"acceptedResourceRoles": [PUBLIC], "role": "dev"}, "the app's role 'dev'"),
    ({"acceptedResourceRoles": [PUBLIC], "role": "*"}, "the app's role '*'"),
    ({"acceptedResourceRoles": [PUBLIC, "dev"]}, "at most one reserved role"),
])
def test_bad_accepted_resource_roles_name_the_field(body, message):
    with pytest.raises(AppInvalid) as caught:
        parse_app({"id": "/x", "cmd": "true", **body})
    (detail,) = caught.value.details
    assert detail["path"] == "/acceptedResourceRoles" and message in detail["errors"][0]


def test_accepted_resource_roles_with_the_app_role_is_valid():
    app = parse_app({"id": "/x", "cmd": "true", "role": PUBLIC, "acceptedResourceRoles": ["*", PUBLIC]})
    assert app.effective_role == PUBLIC and app.accepted_roles == ["*", PUBLIC]


# -- the scheduler ---------------------------------------------------------------------------
async def test_default_app_never_lands_on_the_public_agent_even_when_the_private_ones_are_full(cluster):
    # 2 cpus per agent: four tasks fill both private agents; the public agent's 2 cpus stay idle.
    await cluster.post_app({"id": "/web", "cmd": "true", "cpus": 1, "mem": 16, "instances": 6})
    assert dict(hosts(cluster, "/web")) == {"agent-1": 2, "agent-2": 2}
    entry = cluster.scheduler.queue.entries["/web"]
    assert entry.count == 2
    assert "public-agent-1: its resources are reserved for role 'slave_public'" in entry.detail
    queue = (await cluster.marathon.get("/v2/queue")).json()["queue"]
    assert [q["app"]["id"] for q in queue] == ["/web"]


async def test_public_app_lands_only_on_the_public_agent(cluster):
    resp = await cluster.post_app({"id": "/edge", "cmd": "true", "cpus": 1, "mem": 16, "instances": 3,
                                   "acceptedResourceRoles": [PUBLIC]})
    assert resp.status_code == 201, resp.text
    assert dict(hosts(cluster, "/edge")) == {"public-agent-1": 2}
    assert {t.role for t in cluster.running("/edge")} == {PUBLIC}
    entry = cluster.scheduler.queue.entries["/edge"]
    assert entry.count == 1 and entry.reasons.get("UnfulfilledRole")
    assert "agent-1: its resources are unreserved ('*')" in entry.detail
    app = (await cluster.marathon.get("/v2/apps/edge")).json()["app"]
    assert app["acceptedResourceRoles"] == [PUBLIC]


async def test_app_accepting_both_roles_uses_every_agent(cluster):
    await cluster.post_app({"id": "/any", "cmd": "true", "cpus": 1, "mem": 16, "instances": 6,
                            "acceptedResourceRoles": ["*", PUBLIC]})
    assert dict(hosts(cluster, "/any")) == {"agent-1": 2, "agent-2": 2, "public-agent-1": 2}


async def test_public_and_private_apps_share_the_cluster(cluster):
    await cluster.post_app({"id": "/lb", "cmd": "true", "cpus": 1, "mem": 16, "acceptedResourceRoles": [PUBLIC]})
    await cluster.post_app({"id": "/web", "cmd": "true", "cpus": 0.5, "mem": 16, "instances": 4})
    assert set(hosts(cluster, "/lb")) == {"public-agent-1"}
    assert set(hosts(cluster, "/web")) <= {"agent-1", "agent-2"} and len(cluster.running("/web")) == 4


async def test_master_state_shows_the_role_and_attribute_and_the_cli_calls_it_public(cluster):
    state = (await cluster.mesos.get("/master/state")).json()
    slaves = {s["id"]: s for s in state["slaves"]}
    public = slaves["public-agent-1"]
    assert public["attributes"] == {"public_ip": "true"}
    assert set(public["reserved_resources"]) == {PUBLIC} and public["unreserved_resources"] == {}
    assert slaves["agent-1"]["reserved_resources"] == {}
    assert node_type(public) == "agent (public)" and node_type(slaves["agent-1"]) == "agent"


async def test_agent_with_a_bad_role_is_refused(cluster):
    resp = await cluster.mesos.post("/v1/agents", json={**public_registration(2), "role": "-x"})
    assert resp.status_code == 422 and "role" in resp.text


# -- the lab's plan and seal --------------------------------------------------------------------
def test_lab_plan_puts_public_agents_at_30_plus_k_with_their_own_names():
    import ipaddress

    from navstar.lab import Lab, LabError, owns_namespace, plan_nodes

    nodes = plan_nodes("lab", ipaddress.IPv4Network("198.18.0.0/24"), 2, public_agents=2)
    assert [(n.name, n.ip, n.public) for n in nodes] == [
        ("master", "198.18.0.2", False), ("agent-1", "198.18.0.11", False), ("agent-2", "198.18.0.12", False),
        ("public-agent-1", "198.18.0.31", True), ("public-agent-2", "198.18.0.32", True)]
    assert owns_namespace("lab", "navstar-lab-public-agent-1")
    assert owns_namespace("lab", "navstar-lab-public-agent-1-tmarathon-lb.1")
    assert not owns_namespace("lab-x", "navstar-lab-public-agent-1")
    with pytest.raises(LabError, match="public"):
        Lab("lab-public")          # would own lab's public agents' namespaces


def test_seal_opens_only_the_service_ports_of_public_agents():
    from navstar.lab_seal import seal_script

    public = seal_script("198.18.0.1", "public")
    assert "ct original proto-dst { 80, 443, 9090, 10000-10100 } accept" in public
    assert public.count("ip saddr 198.18.0.1 counter drop") == 2          # input and forward
    agent = seal_script("198.18.0.1", "agent")
    assert "10000" not in agent and "tcp dport { 5051, 62080, 61091, 61421 } counter drop" in agent
    assert "tcp dport 80 accept" in seal_script("198.18.0.1", "master")


async def test_scaling_a_bridge_app_keeps_its_tasks(cluster):
    # examples/nginx-marathon-lb.json (BRIDGE, port mappings, no portDefinitions): Marathon renders
    # "portDefinitions": [] and a PUT of {"instances": n} merged onto that is a scale, not a new
    # configuration — the running task stays (1 → 4 → 2 behind marathon-lb without a failure).
    import json as _json
    from pathlib import Path

    app = _json.loads((Path(__file__).resolve().parents[2] / "examples" / "nginx-marathon-lb.json").read_text())
    assert (await cluster.post_app(app)).status_code == 201
    kept = {t.task_id for t in cluster.running("/nginx")}
    for instances in (4, 2):
        resp = await cluster.marathon.put("/v2/apps/nginx", params={"force": "true"}, json={"instances": instances})
        assert resp.status_code == 200, resp.text
        await cluster.settle()
        now = {t.task_id for t in cluster.running("/nginx")}
        assert len(now) == instances and (kept <= now if instances == 4 else now <= kept)
        kept = now
    info = (await cluster.marathon.get("/v2/apps/nginx")).json()["app"]["versionInfo"]
    assert info["lastScalingAt"] > info["lastConfigChangeAt"]
