"""Issue 16's Prometheus acceptance in a real lab (``navstar lab up --prometheus``): the lab's
Prometheus, queried over its HTTP API from inside the master's namespace (``navstar lab exec
master -- curl``), scrapes every node, counts the ``nginxdocker`` VIP's connections, and fires
the no-healthy-backend alert when every backend of a VIP is killed.
"""

from __future__ import annotations

import json
import os
import signal
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.conftest import REPO, LabHandle, _free_subnet, navstar
from tests.e2e.traffic import WEB_SERVER, curl_batch, deployed, sandbox, wait_vip_serves
from tests.waiting import wait_until

NGINX = "nginxdocker.marathon.l4lb.thisdcos.directory"
PROMWEB = "promweb.marathon.l4lb.thisdcos.directory"


@pytest.fixture(scope="module")
def lab() -> Iterator[LabHandle]:
    handle = LabHandle(f"p{uuid.uuid4().hex[:6]}", _free_subnet(), "auto")
    try:
        up = navstar("lab", "up", "--name", handle.name, "--agents", "2", "--underlay", handle.subnet,
                     "--prometheus", timeout=240)
        assert up.returncode == 0, up.stdout + up.stderr
        yield handle
    finally:
        down = navstar("lab", "down", "--name", handle.name)
        assert down.returncode == 0, down.stdout + down.stderr


def api(lab: LabHandle, path: str, **params: str) -> dict:
    """GET the lab's Prometheus API from inside the master's namespace."""
    args = [arg for key, value in params.items() for arg in ("--data-urlencode", f"{key}={value}")]
    out = lab.exec("master", "curl", "-sf", "-G", *args, f"http://127.0.0.1:9090/api/v1/{path}")
    assert out.returncode == 0, f"curl {path}: exit {out.returncode} {out.stderr}"
    body = json.loads(out.stdout)
    assert body["status"] == "success", body
    return body["data"]


def value(lab: LabHandle, query: str) -> float | None:
    """The single value of an instant query (None when it returns nothing)."""
    result = api(lab, "query", query=query)["result"]
    assert len(result) <= 1, result
    return float(result[0]["value"][1]) if result else None


def test_every_target_is_up(lab: LabHandle):
    state = lab.state
    want = ({("navstar-master", f"{state.master.ip}:5050"), ("prometheus", "127.0.0.1:9090")}
            | {("navstar-agent", f"{n.ip}:61091") for n in state.nodes[1:]})

    def all_up():
        seen = {(r["metric"]["job"], r["metric"]["instance"]): r["value"][1]
                for r in api(lab, "query", query="up")["result"]}
        return seen if set(seen) == want and set(seen.values()) == {"1"} else None

    wait_until(all_up, 60, interval=0.5, message=f"up == 1 for {sorted(want)}")


def test_nginxdocker_connection_counter_rises_after_50_curls(lab: LabHandle):
    app = json.loads((REPO / "examples" / "nginxdocker-vip.json").read_text())
    query = f'sum(navstar_minuteman_connections_total{{vip="{NGINX}:80"}}) or vector(0)'
    with deployed(lab, app):
        tasks = lab.running(app["id"], app["instances"], timeout=60)
        wait_vip_serves(lab, NGINX, tasks, bridge_container_port=80)
        # Scraped since the VIP was programmed: the series exists (0 before any connection).
        wait_until(lambda: api(lab, "query", query=f'navstar_minuteman_connections_total{{vip="{NGINX}:80"}}')["result"],
                   30, interval=0.5, message=f"{NGINX} connection counters scraped")
        before = value(lab, query)
        assert before is not None
        batch = curl_batch(lab, "agent-1", NGINX, 50)
        assert not batch.failures, batch.describe()
        wait_until(lambda: (value(lab, query) or 0) >= before + 50, 30, interval=0.5,
                   message=f"{query} from {before:g} to at least {before + 50:g}")


def test_killing_every_backend_of_a_vip_fires_its_alert(lab: LabHandle):
    # The server runs beside the task's own process, so killing it leaves the task (and its
    # backend) in place but failing its health check — a killed task would be replaced, and its
    # VIP would simply go away with its last backend. maxConsecutiveFailures 0: never killed.
    app = {"id": "/promweb", "instances": 2, "cpus": 0.05, "mem": 32,
           "cmd": f"python3 -c '{WEB_SERVER}' & exec sleep 3600",
           "portDefinitions": [{"port": 0, "protocol": "tcp", "labels": {"VIP_0": "/promweb:80"}}],
           "constraints": [["hostname", "UNIQUE"]],
           "healthChecks": [{"protocol": "HTTP", "path": "/", "portIndex": 0, "gracePeriodSeconds": 30,
                             "intervalSeconds": 1, "timeoutSeconds": 1, "delaySeconds": 0,
                             "maxConsecutiveFailures": 0}]}

    def firing() -> list[dict]:
        return [a for a in api(lab, "alerts")["alerts"]
                if a["labels"]["alertname"] == "NavstarVipNoHealthyBackend"
                and a["labels"].get("vip") == f"{PROMWEB}:80" and a["state"] == "firing"]

    with deployed(lab, app):
        tasks = lab.running(app["id"], 2, timeout=60, healthy=True)
        wait_vip_serves(lab, PROMWEB, tasks)
        assert not firing()
        for task in tasks:
            pid_file = sandbox(lab, task) / "server.pid"
            pid = int(wait_until(pid_file.read_text, 10, message=f"{pid_file}"))
            os.kill(pid, signal.SIGKILL)
        agents = {f"{n.ip}:61091" for n in lab.state.nodes[1:]}
        wait_until(lambda: {a["labels"]["instance"] for a in firing()} == agents, 60, interval=0.5,
                   message=f"NavstarVipNoHealthyBackend firing for {PROMWEB} on every agent {sorted(agents)}")
        assert {t["id"] for t in lab.running(app["id"], 2)} == {t["id"] for t in tasks}, "tasks were replaced"


def test_prometheus_is_served_from_outside_through_admin_router_behind_login(lab: LabHandle):
    """From the root namespace (the outside), /prometheus/ answers only after a login: with the
    token in the Authorization header, or with the cookie the login set, as a browser sends it."""
    front = lab.state.front_door
    query = f"{front}/prometheus/api/v1/query?query=up"
    assert httpx.get(query, timeout=10).status_code == 401
    password = (lab.state.directory / "admin-password").read_text().strip()
    with httpx.Client(timeout=30) as browser:
        def attempt() -> httpx.Response | None:
            resp = browser.post(f"{front}/acs/api/v1/auth/login", json={"uid": "admin", "password": password})
            return None if resp.status_code == 429 else resp
        login = wait_until(attempt, 30, message="a login past the rate limit")
        assert login.status_code == 200, login.text
        by_header = httpx.get(query, headers={"Authorization": f"token={login.json()['token']}"}, timeout=10)
        assert by_header.status_code == 200 and by_header.json()["status"] == "success", by_header.text
        by_cookie = browser.get(query)               # the client carries dcos-acs-auth-cookie
        assert by_cookie.status_code == 200 and by_cookie.json()["status"] == "success", by_cookie.text
        page = browser.get(f"{front}/prometheus/", follow_redirects=True)      # to its graph page
        assert page.status_code == 200 and "/prometheus/" in page.text
        assert browser.post(f"{front}/acs/api/v1/auth/logout").status_code == 204
        assert browser.get(query).status_code == 401
