"""Issue 13 in a real lab: public agents and north–south traffic through marathon-lb.

One lab (2 agents, 1 public agent). From the root namespace — the lab's outside — the public
agent answers on its service ports and on nothing else; apps land there only with
``acceptedResourceRoles: ["slave_public"]``; marathon-lb (``examples/marathon-lb.json``) on it
serves ``examples/nginx-marathon-lb.json`` on :10000, ``marathon-lb.marathon.mesos`` inside, its
stats, virtual hosts on :80, scaling under wrk without a failed request, and autoscaling under
siege.
"""

from __future__ import annotations

import os
import subprocess

import httpx
import pytest

from tests.e2e.conftest import NAVSTAR, LabHandle, wait_until

pytestmark = pytest.mark.e2e

PUBLIC = "public-agent-1"


@pytest.fixture(scope="module")
def lab(lab_factory) -> LabHandle:
    return lab_factory(agents=2, public_agents=1)


@pytest.fixture(autouse=True)
def _restored(lab: LabHandle) -> None:
    lab.restore()


def outside(url: str, timeout: float = 2.0, **kwargs) -> httpx.Response:
    """A request from the root namespace (the lab's outside)."""
    return httpx.get(url, timeout=timeout, **kwargs)


def refused_from_outside(ip: str, port: int) -> bool:
    """No answer from the root namespace: the connection neither opens nor is refused (dropped)."""
    try:
        httpx.get(f"http://{ip}:{port}/", timeout=1.5)
    except httpx.ConnectTimeout:
        return True
    except httpx.HTTPError:
        return False            # refused or reset: the packet got there
    return False


def test_public_agent_registers_with_its_role_and_attribute(lab: LabHandle) -> None:
    with lab.mesos() as client:
        slaves = {s["id"]: s for s in client.get("/master/state").json()["slaves"]}
    assert set(slaves) == {"agent-1", "agent-2", PUBLIC}
    public = slaves[PUBLIC]
    assert public["attributes"] == {"public_ip": "true"}
    assert list(public["reserved_resources"]) == ["slave_public"]
    assert public["pid"].endswith(f"@{lab.ip(PUBLIC)}:5051")
    assert lab.ip(PUBLIC).endswith(".31")
    assert all(slaves[a]["reserved_resources"] == {} for a in ("agent-1", "agent-2"))
    listing = subprocess.run([*NAVSTAR, "node", "list", "--lab", lab.name], capture_output=True, text=True,
                             timeout=30, env={**os.environ, "COLUMNS": "200"})
    assert listing.returncode == 0, listing.stderr
    rows = {line.split("│")[1].strip(): line for line in listing.stdout.splitlines() if line.count("│") > 3}
    assert "agent (public)" in rows[PUBLIC] and "agent (public)" not in rows["agent-1"]


def test_apps_land_on_the_public_agent_only_when_they_accept_its_role(lab: LabHandle) -> None:
    with lab.mesos() as client:
        slaves = client.get("/master/state").json()["slaves"]
    private_cpus = sum(int(s["resources"]["cpus"]) for s in slaves if not s["reserved_resources"])
    # One cpu per task: the private agents hold private_cpus of them, two more wait — and the
    # public agent's idle cpus never take them.
    lab.add_app({"id": "/inside", "cmd": "sleep 3600", "cpus": 1, "mem": 16, "instances": private_cpus + 2})
    lab.add_app({"id": "/edge", "cmd": "sleep 3600", "cpus": 0.1, "mem": 16, "instances": 2,
                 "acceptedResourceRoles": ["slave_public"]})
    try:
        inside = lab.running("/inside", private_cpus, timeout=60)
        edge = lab.running("/edge", 2, timeout=60)
        assert {t["slaveId"] for t in inside} <= {"agent-1", "agent-2"}
        assert {t["slaveId"] for t in edge} == {PUBLIC}

        def queued() -> dict | None:
            with lab.marathon() as client:
                entries = client.get("/v2/queue").json()["queue"]
            return next((e for e in entries if e["app"]["id"] == "/inside" and e["count"] == 2), None)
        entry = wait_until(queued, 20, message="/inside's two waiting instances in /v2/queue")
        assert f"{PUBLIC}: its resources are reserved for role 'slave_public'" in \
            entry["processedOffersSummary"]["reason"]
        assert not any(t["slaveId"] == PUBLIC for t in lab.tasks("/inside"))
        with lab.marathon() as client:
            bad = client.post("/v2/apps", json={"id": "/bad-roles", "cmd": "true", "acceptedResourceRoles": []})
        assert bad.status_code == 422 and bad.json()["details"][0]["path"] == "/acceptedResourceRoles"
    finally:
        lab.remove_app("/inside")
        lab.remove_app("/edge")


def test_outside_reaches_the_public_agent_only_on_its_service_ports(lab: LabHandle) -> None:
    # One task on the public agent listening on a service port (10100) and on one that is not
    # (31999): from outside the first answers, the second and the agent's own ports do not;
    # from a private agent every one of them answers.
    serve = ("import http.server as h, os, threading\n"
             "for p in os.environ['PORTS'].split(','):\n"
             "    s = h.ThreadingHTTPServer(('', int(p)), h.SimpleHTTPRequestHandler)\n"
             "    threading.Thread(target=s.serve_forever).start()\n")
    lab.add_app({"id": "/probe", "cmd": f"exec python3 -c \"{serve}\"", "cpus": 0.05, "mem": 32,
                 "acceptedResourceRoles": ["slave_public"], "requirePorts": True,
                 "portDefinitions": [{"port": 10100}, {"port": 31999}]})
    ip = lab.ip(PUBLIC)
    try:
        lab.running("/probe", 1, timeout=60)
        for port in (10100, 31999):
            wait_until(lambda port=port: lab.exec("agent-1", "curl", "-sf", "-o", "/dev/null",
                                                  f"http://{ip}:{port}/").returncode == 0,
                       20, message=f"the probe answering on {ip}:{port} inside the lab")
        assert outside(f"http://{ip}:10100/").status_code == 200
        for port in (31999, 5051, 61091, 61421):
            assert refused_from_outside(ip, port), f"{ip}:{port} answered from the root namespace"
        inside = lab.exec("agent-1", "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://{ip}:5051/v1/ping")
        assert inside.stdout == "401"           # there, and asking for the cluster secret
        # The masters' other ports stay sealed as before; only :80 is open.
        assert refused_from_outside(lab.state.master.ip, 8080)
    finally:
        lab.remove_app("/probe")
