"""Issue 13 in a real lab: public agents and north–south traffic through marathon-lb.

One lab (2 agents, 1 public agent). From the root namespace — the lab's outside — the public
agent answers on its service ports and on nothing else; apps land there only with
``acceptedResourceRoles: ["slave_public"]``; marathon-lb (``examples/marathon-lb.json``) on it
serves ``examples/nginx-marathon-lb.json`` on :10000, ``marathon-lb.marathon.mesos`` inside, its
stats, virtual hosts on :80, scaling under wrk without a failed request, and autoscaling under
siege.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest

from navstar.edge import with_options
from tests.e2e.conftest import NAVSTAR, REPO, LabHandle, wait_until

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
    # Like any agent it runs the overlay and the resolver.
    with lab.mesos() as client:
        view = {a["agent_id"]: a for a in client.get("/v1/view").json()["agents"]}
    assert view[PUBLIC]["overlay"]["subnet"]
    # (The agent builds both from the first view it gets after registering.)
    wait_until(lambda: "vtep1024" in lab.exec(PUBLIC, "ip", "-br", "link").stdout, 20,
               message="vtep1024 on the public agent")
    wait_until(lambda: lab.exec(PUBLIC, "dig", "+short", "leader.mesos", "@198.51.100.1").stdout.split()
               == [lab.state.master.ip], 20, message="leader.mesos from the public agent's resolver")
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
    # Bridge-mode tasks there too: their host ports are forwarded into the task's namespace.
    for app_id, host_port in (("/probe-open", 10099), ("/probe-closed", 31998)):
        bridge = example("nginx-marathon-lb.json")
        bridge.update(id=app_id, labels={}, healthChecks=[], acceptedResourceRoles=["slave_public"])
        bridge["container"]["docker"]["portMappings"] = [{"hostPort": host_port, "containerPort": 80}]
        lab.add_app(bridge)
    ip = lab.ip(PUBLIC)
    try:
        for app_id in ("/probe", "/probe-open", "/probe-closed"):
            lab.running(app_id, 1, timeout=60)
        for port in (10100, 31999, 10099, 31998):
            wait_until(lambda port=port: lab.exec("agent-1", "curl", "-sf", "-o", "/dev/null",
                                                  f"http://{ip}:{port}/").returncode == 0,
                       20, message=f"the probe answering on {ip}:{port} inside the lab")
        assert outside(f"http://{ip}:10100/").status_code == 200
        assert "Welcome to nginx!" in outside(f"http://{ip}:10099/").text
        for port in (31999, 31998, 5051, 61091, 61421):
            assert refused_from_outside(ip, port), f"{ip}:{port} answered from the root namespace"
        inside = lab.exec("agent-1", "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://{ip}:5051/v1/ping")
        assert inside.stdout == "401"           # there, and asking for the cluster secret
        # The masters' other ports stay sealed as before; only :80 is open.
        assert refused_from_outside(lab.state.master.ip, 8080)
    finally:
        for app_id in ("/probe", "/probe-open", "/probe-closed"):
            lab.remove_app(app_id)


# -- marathon-lb on the public agent ---------------------------------------------------------------
def example(name: str) -> dict:
    return json.loads((REPO / "examples" / name).read_text())


def app_path(app: dict) -> str:
    return "/" + app["id"].strip("/")


def stats_rows(ip: str) -> list[dict[str, str]]:
    """HAProxy's stats CSV, read from outside as a user would (``:9090`` is a service port)."""
    text = outside(f"http://{ip}:9090/haproxy?stats;csv", timeout=5).text
    return list(csv.DictReader(io.StringIO(text.lstrip("# "))))


def serving(ip: str, backend: str) -> list[str]:
    """Addresses of the backend's servers HAProxy serves (free slots are in maintenance; servers
    are up, or "no check": marathon-lb leaves health to Marathon)."""
    return sorted(r["addr"] for r in stats_rows(ip)
                  if r["pxname"] == backend and r["svname"] not in ("FRONTEND", "BACKEND")
                  and (r["status"] == "UP" or r["status"] == "no check"))


def task_addresses(lab: LabHandle, tasks: list[dict]) -> list[str]:
    return sorted(f"{lab.ip(t['slaveId'])}:{t['ports'][0]}" for t in tasks)


@pytest.fixture(scope="module")
def edge(lab: LabHandle) -> Iterator[tuple[str, str]]:
    """marathon-lb (examples/marathon-lb.json) on the public agent and the nginx app
    (examples/nginx-marathon-lb.json, unchanged), both running; (lb app id, nginx app id)."""
    lb, nginx = example("marathon-lb.json"), example("nginx-marathon-lb.json")
    lab.add_app(lb)
    lab.add_app(nginx)
    try:
        (lb_task,) = lab.running(app_path(lb), 1, timeout=90)
        assert lb_task["slaveId"] == PUBLIC
        lab.running(app_path(nginx), 1, timeout=90, healthy=True)
        yield app_path(lb), app_path(nginx)
    finally:
        lab.remove_app(app_path(nginx))
        lab.remove_app(app_path(lb))


def test_nginx_answers_through_marathon_lb_outside_and_inside(lab: LabHandle, edge: tuple[str, str]) -> None:
    _lb, nginx = edge
    ip = lab.ip(PUBLIC)
    (task,) = lab.running(nginx, 1, healthy=True)

    def page() -> str | None:
        try:
            resp = outside(f"http://{ip}:10000/")
        except httpx.HTTPError:
            return None
        return resp.text if resp.status_code == 200 else None
    body = wait_until(page, 60, message=f"nginx through http://{ip}:10000/ from the root namespace")
    assert "Welcome to nginx!" in body and task["id"] in body
    # Inside, by the Mesos-DNS name of marathon-lb's task: the public agent's address (HOST network).
    dig = lab.exec("agent-1", "dig", "+short", "marathon-lb.marathon.mesos", "@198.51.100.1")
    assert dig.stdout.split() == [ip], dig.stdout
    inside = lab.exec("agent-1", "curl", "-s", "-m", "5", "http://marathon-lb.marathon.mesos:10000/")
    assert inside.returncode == 0 and "Welcome to nginx!" in inside.stdout and task["id"] in inside.stdout
    assert wait_until(lambda: serving(ip, "nginx_10000") == task_addresses(lab, [task]), 20,
                      message="backend nginx_10000 in the stats CSV with the task's address")
    assert any(r["pxname"] == "nginx_10000" and r["svname"] == "FRONTEND" for r in stats_rows(ip))


def test_scaling_under_wrk_fails_no_request(lab: LabHandle, edge: tuple[str, str]) -> None:
    _lb, nginx = edge
    ip = lab.ip(PUBLIC)
    wait_until(lambda: len(serving(ip, "nginx_10000")) == 1, 30, message="one nginx server behind :10000")
    wrk = subprocess.Popen(["wrk", "-t2", "-c8", "-d120s", f"http://{ip}:10000/"], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    try:
        for instances in (4, 2):
            with lab.marathon() as client:
                resp = client.put(f"/v2/apps{nginx}", params={"force": "true"}, json={"instances": instances})
                assert resp.status_code == 200, resp.text

            def settled(instances: int = instances) -> bool:
                tasks = [t for t in lab.tasks(nginx) if t.get("state") == "TASK_RUNNING"]
                healthy = [t for t in tasks if all(r.get("alive") for r in t.get("healthCheckResults") or [{}])]
                return len(tasks) == instances and len(healthy) == instances \
                    and serving(ip, "nginx_10000") == task_addresses(lab, healthy)
            wait_until(settled, 60, message=f"{instances} healthy nginx tasks, all of them behind :10000")
        assert wrk.poll() is None, "wrk ended before the scaling did"
    finally:
        wrk.send_signal(signal.SIGINT)           # wrk stops and prints its summary
        out, _ = wrk.communicate(timeout=20)
    done = re.search(r"(\d+) requests in", out)
    assert done and int(done.group(1)) > 100, out
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    assert errors is None and non_2xx is None, out       # wrk prints these lines only when not zero


def test_vhosts_route_by_host_header_on_port_80(lab: LabHandle, edge: tuple[str, str]) -> None:
    ip = lab.ip(PUBLIC)
    apps = {}
    for name, port in (("a", 10001), ("b", 10002)):
        app = example("nginx-marathon-lb.json")
        app["id"] = f"/vhost-{name}"
        app["container"]["docker"]["portMappings"][0]["servicePort"] = port
        app["labels"] = {"HAPROXY_GROUP": "external", "HAPROXY_0_VHOST": f"{name}.example"}
        apps[name] = app
        lab.add_app(app)
    try:
        tasks = {name: lab.running(app_path(app), 1, healthy=True, timeout=60)[0] for name, app in apps.items()}

        def routed(host: str) -> str | None:
            try:
                resp = outside(f"http://{ip}/", headers={"Host": host})
            except httpx.HTTPError:
                return None
            return resp.text if resp.status_code == 200 else None
        for name, other in (("a", "b"), ("b", "a")):
            body = wait_until(lambda name=name: routed(f"{name}.example"), 60,
                              message=f"{name}.example routed on :80")
            assert tasks[name]["id"] in body and tasks[other]["id"] not in body
        assert outside(f"http://{ip}/", headers={"Host": "c.example"}).status_code in (403, 404, 503)
    finally:
        for app in apps.values():
            lab.remove_app(app_path(app))


def test_autoscale_follows_siege_up_to_the_target_and_back_to_the_minimum(lab: LabHandle,
                                                                          edge: tuple[str, str]) -> None:
    _lb, nginx = edge
    ip = lab.ip(PUBLIC)
    target_rps, maximum = 5, 3
    with lab.marathon() as client:
        client.put(f"/v2/apps{nginx}", params={"force": "true"}, json={"instances": 1}).raise_for_status()
    auto = with_options(example("marathon-lb-autoscale.json"), {
        "--apps": "nginx_10000", "--target-rps": str(target_rps), "--interval": "1", "--samples": "3",
        "--cooldown": "2", "--min-instances": "1", "--max-instances": str(maximum)})
    lab.add_app(auto)
    siege = None
    try:
        lab.running(app_path(auto), 1, timeout=60)
        wait_until(lambda: len(serving(ip, "nginx_10000")) == 1, 60, message="nginx back to one server")
        # 20 users, each waiting up to 1 s between requests: some 25 requests/s, and
        # ceil(25 / 5) is above the maximum, so the target is the maximum.
        siege = subprocess.Popen(["siege", "-c", "20", "-d", "1", "-t", "5M", f"http://{ip}:10000/"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: lab_instances(lab, nginx) == maximum, 60, message=f"{nginx} scaled to {maximum}")
        # The rate HAProxy counts under this load (as the autoscaler reads it) asks for that target.
        first = (backend_requests(ip), time.monotonic())
        wait_until(lambda: time.monotonic() - first[1] >= 3, 5, interval=0.2, message="a 3 s window")
        rate = (backend_requests(ip) - first[0]) / (time.monotonic() - first[1])
        assert min(maximum, math.ceil(rate / target_rps)) == maximum, rate
        assert lab_instances(lab, nginx) == maximum           # and it stays there under the load
        siege.send_signal(signal.SIGINT)
        siege.wait(timeout=20)
        wait_until(lambda: lab_instances(lab, nginx) == 1, 60, message=f"{nginx} back to 1 after the load")
    finally:
        if siege is not None and siege.poll() is None:
            siege.kill()
            siege.wait()
        lab.remove_app(app_path(auto))


def backend_requests(ip: str) -> float:
    row = next(r for r in stats_rows(ip) if r["pxname"] == "nginx_10000" and r["svname"] == "BACKEND")
    return float(row["req_tot"] or row["stot"])


def lab_instances(lab: LabHandle, app_id: str) -> int:
    with lab.marathon() as client:
        return int(client.get(f"/v2/apps{app_id}").json()["app"]["instances"])
