"""Registering an agent: a full overlay pool refuses it with 409 and changes nothing."""

import httpx
import pytest
from pydantic import ValidationError

from cluster.view import OverlayConfig
from control.agent_client import FakeAgents
from control.http import master_apps
from control.master import Master
from control.registry import PortRange
from tests.unit.master_harness import registration


async def test_agent_beyond_the_overlay_pool_gets_409_and_is_not_registered(tmp_path):
    # A /23 cut into /24s: room for exactly two agents.
    master = Master(state_dir=str(tmp_path), agent_client=FakeAgents(), advertise_ip="198.18.0.2",
                    overlay=OverlayConfig(subnet="10.200.0.0/23", agent_prefixlen=24))
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(master_apps(master).mesos),
                                     base_url="http://master:5050") as mesos:
            for index in (1, 2):
                assert (await mesos.post("/v1/agents", json=registration(index))).status_code == 200
            overlay_before = master.store.get("allocations", "overlay")
            version_before = master.view_version

            resp = await mesos.post("/v1/agents", json=registration(3))

            assert resp.status_code == 409, resp.text
            assert "subnet" in resp.json()["message"] and "10.200.0.0/23" in resp.json()["message"]
            agents = (await mesos.get("/v1/agents")).json()["agents"]
            assert "agent-3" not in str(agents) and "agent-1" in str(agents)
            assert master.registry.get("agent-3") is None
            assert [key for key, _ in master.store.items("agents")] == ["agent-1", "agent-2"]
            assert master.store.get("allocations", "overlay") == overlay_before
            assert master.ipam.get("agent-3") is None
            assert master.view_version == version_before
            with pytest.raises(KeyError):
                master.allocator.free("agent-3")
            # A known agent registering again keeps its allocation and is still welcome.
            assert (await mesos.post("/v1/agents", json=registration(2))).status_code == 200
            await master.scheduler.settle()
    finally:
        master.close()


def test_port_range_begin_after_end_is_rejected_naming_the_range():
    assert PortRange(begin=31000, end=31000).end == 31000
    with pytest.raises(ValidationError, match="port range 31100-31000"):
        PortRange(begin=31100, end=31000)


async def test_registration_with_a_reversed_port_range_is_a_422_naming_it(tmp_path):
    master = Master(state_dir=str(tmp_path), agent_client=FakeAgents(), advertise_ip="198.18.0.2")
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(master_apps(master).mesos),
                                     base_url="http://master:5050") as mesos:
            resp = await mesos.post("/v1/agents", json=registration(1, ports=(31100, 31000)))
            assert resp.status_code == 422, resp.text
            [detail] = resp.json()["details"]
            assert detail["path"] == "/resources/ports/0" and "31100-31000" in detail["errors"][0]
            assert master.registry.get("agent-1") is None
    finally:
        master.close()
