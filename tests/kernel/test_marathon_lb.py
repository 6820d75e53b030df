"""marathon-lb against Debian's HAProxy in a namespace of its own: a real-HTTP Marathon
(``marathon_lb.fake_marathon``), tiny HTTP backends, curl as the client."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
MARATHON = "http://127.0.0.1:8080"

# A backend: answers every GET with its name (and the Host header it saw), HTTP/1.1 keep-alive.
BACKEND = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
name, port = sys.argv[1], int(sys.argv[2])
class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True      # headers and body go out at once, not 40 ms apart
    def do_GET(self):
        body = f"{name} host={self.headers.get('Host')}\\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""

# haproxy that refuses every configuration check while <dir>/refuse exists (the fault on demand).
REFUSING_HAPROXY = """#!/bin/sh
if [ "$1" = "-c" ] && [ -e "{flag}" ]; then echo "[ALERT] refused on demand by the test" >&2; exit 1; fi
exec /usr/sbin/haproxy "$@"
"""


def app(app_id: str, port: int, tasks: list[int], **labels: str) -> dict[str, Any]:
    return {"id": app_id, "labels": {"HAPROXY_GROUP": "external", **labels},
            "portDefinitions": [{"port": port, "protocol": "tcp"}],
            "tasks": [{"id": f"{app_id.strip('/')}.t{p}", "host": "127.0.0.1", "ports": [p],
                       "state": "TASK_RUNNING"} for p in tasks]}


class Edge:
    def __init__(self, ns: Any, tmp: Path) -> None:
        self.ns = ns
        self.tmp = tmp
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        # As deep as a Mesos sandbox: too long for unix socket paths, which then go elsewhere.
        self.run_dir = tmp / ("sandbox-" + "x" * 80) / "haproxy"

    def spawn(self, name: str, *argv: str) -> None:
        log = open(self.tmp / f"{name}.log", "ab")
        self.procs[name] = self.ns.popen(*argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:     # uvicorn waits for open event streams: end it
            proc.kill()
            proc.wait(timeout=10)

    def backend(self, port: int) -> None:
        self.spawn(f"backend-{port}", sys.executable, "-c", BACKEND, f"b{port}", str(port))
        wait_until(lambda: self.curl(f"http://127.0.0.1:{port}/").startswith(f"b{port}"), message=f"backend {port}")

    def marathon(self, apps: list[dict[str, Any]]) -> None:
        path = self.tmp / "apps.json"
        path.write_text(json.dumps(apps))
        self.spawn("marathon", sys.executable, "-m", "marathon_lb.fake_marathon", "--listen", "127.0.0.1:8080",
                   "--apps", str(path))
        wait_until(lambda: '"apps"' in self.curl(f"{MARATHON}/v2/apps"), message="the fake Marathon")

    def set_apps(self, apps: list[dict[str, Any]]) -> None:
        out = self.ns.run("curl", "-sf", "-X", "PUT", "-H", "Content-Type: application/json",
                          "--data-binary", json.dumps(apps), f"{MARATHON}/_fake/apps")
        assert '"apps"' in out.stdout

    def lb(self, *extra: str) -> None:
        self.spawn("marathon-lb", sys.executable, "-m", "navstar", "marathon-lb", "--marathon", MARATHON,
                   "--group", "external", "--haproxy-dir", str(self.run_dir), "--coalesce", "0.05",
                   "--max-backoff", "1", *extra)
        wait_until(lambda: self.curl("http://127.0.0.1:9090/_haproxy_health_check", status=True) == "200",
                   message="marathon-lb's health check")

    def curl(self, url: str, host: str | None = None, status: bool = False) -> str:
        argv = ["curl", "-s", "--max-time", "5"]
        if host:
            argv += ["-H", f"Host: {host}"]
        if status:
            argv += ["-o", "/dev/null", "-w", "%{http_code}"]
        return str(self.ns.run(*argv, url, check=False).stdout)

    def status(self) -> dict[str, Any]:
        return dict(json.loads(self.curl("http://127.0.0.1:9090/_marathon_lb/status") or "{}"))

    def metric(self, name: str) -> float:
        for line in self.curl("http://127.0.0.1:9090/_marathon_lb/metrics").splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def stats_rows(self, backend: str) -> list[dict[str, str]]:
        text = self.curl("http://127.0.0.1:9090/haproxy?stats;csv").lstrip("# ")
        lines = text.splitlines()
        header = lines[0].split(",") if lines else []
        rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:]]
        return [r for r in rows if r.get("pxname") == backend]

    def answers(self, url: str, tries: int = 12, host: str | None = None) -> set[str]:
        return {self.curl(url, host=host).split(" ")[0] for _ in range(tries)}

    def close(self) -> None:
        for name in list(self.procs):
            proc = self.procs[name]
            if proc.poll() is None:
                self.stop(name)


@pytest.fixture
def edge(netns: Any, tmp_path: Path) -> Iterator[Edge]:
    edge = Edge(netns, tmp_path)
    try:
        yield edge
    finally:
        edge.close()


def worker_pid(edge: Edge) -> int:
    return int(edge.status()["haproxyWorkerPid"])


def test_apps_become_frontends_and_backend_changes_need_no_reload(edge: Edge) -> None:
    for port in (31001, 31002, 31003):
        edge.backend(port)
    edge.marathon([app("/nginx", 10000, [31001])])
    edge.lb()
    wait_until(lambda: edge.curl("http://127.0.0.1:10000/").startswith("b31001"), message="nginx_10000 served")
    rows = edge.stats_rows("nginx_10000")
    assert any(r["svname"] == "BACKEND" for r in rows)
    assert any(r.get("addr") == "127.0.0.1:31001" for r in rows), rows
    assert "backend nginx_10000" in edge.curl("http://127.0.0.1:9090/_haproxy_getconfig")
    assert "haproxy_backend_http_requests_total" in edge.curl("http://127.0.0.1:9090/metrics")

    pid, reloads = worker_pid(edge), edge.metric("navstar_marathon_lb_reloads_total")
    edge.set_apps([app("/nginx", 10000, [31001, 31002, 31003])])
    wait_until(lambda: edge.answers("http://127.0.0.1:10000/") == {"b31001", "b31002", "b31003"},
               message="three backends answering")
    edge.set_apps([app("/nginx", 10000, [31002])])
    wait_until(lambda: edge.answers("http://127.0.0.1:10000/") == {"b31002"}, message="one backend left")
    assert worker_pid(edge) == pid, "a server change must not reload HAProxy"
    assert edge.metric("navstar_marathon_lb_reloads_total") == reloads
    assert edge.metric("navstar_marathon_lb_runtime_updates_total") >= 2
    rows = {r["svname"]: r for r in edge.stats_rows("nginx_10000")}
    assert sum(1 for r in rows.values() if r.get("addr") == "127.0.0.1:31002" and r["status"] != "MAINT") == 1


def test_vhosts_route_by_host_header_and_bad_labels_skip_only_their_app(edge: Edge) -> None:
    for port in (31001, 31002):
        edge.backend(port)
    edge.marathon([app("/a", 10001, [31001], HAPROXY_0_VHOST="a.example"),
                   app("/b", 10002, [31002], HAPROXY_0_VHOST="b.example"),
                   app("/bad-mode", 10003, [31001], HAPROXY_0_MODE="udp"),
                   app("/bad-port", 10004, [31001], HAPROXY_0_PORT="70000"),
                   app("/clash", 10001, [31002])])
    edge.lb()
    wait_until(lambda: edge.curl("http://127.0.0.1/", host="a.example").startswith("b31001 host=a.example"),
               message="a.example routed to /a")
    assert edge.curl("http://127.0.0.1/", host="b.example:80").startswith("b31002")
    assert edge.curl("http://127.0.0.1/", host="c.example", status=True) == "503"
    assert edge.curl("http://127.0.0.1:10002/").startswith("b31002")
    skipped = {s["app"]: s["reason"] for s in edge.status()["skipped"]}
    assert set(skipped) == {"/bad-mode", "/bad-port", "/clash"}
    assert "HAPROXY_0_MODE" in skipped["/bad-mode"] and "HAPROXY_0_PORT" in skipped["/bad-port"]
    assert "10001" in skipped["/clash"]
    assert edge.metric("navstar_marathon_lb_skipped_apps") == 3
    assert edge.curl("http://127.0.0.1:10003/", status=True) == "000"     # nothing bound there


def test_refused_configuration_never_replaces_the_running_one(edge: Edge) -> None:
    edge.backend(31001)
    edge.marathon([app("/nginx", 10000, [31001])])
    flag = edge.tmp / "refuse"
    wrapper = edge.tmp / "haproxy-wrapper"
    wrapper.write_text(REFUSING_HAPROXY.replace("{flag}", str(flag)))
    wrapper.chmod(0o755)
    edge.lb("--haproxy", str(wrapper))
    wait_until(lambda: edge.curl("http://127.0.0.1:10000/").startswith("b31001"), message="nginx_10000 served")
    before = edge.curl("http://127.0.0.1:9090/_haproxy_getconfig")
    flag.touch()
    edge.set_apps([app("/nginx", 10000, [31001]), app("/other", 10005, [31001])])
    wait_until(lambda: edge.metric("navstar_marathon_lb_config_refused_total") >= 1, message="the refusal counted")
    assert edge.curl("http://127.0.0.1:9090/_haproxy_getconfig") == before
    assert (edge.run_dir / "haproxy.cfg").read_text() == before
    assert edge.curl("http://127.0.0.1:10000/").startswith("b31001")
    assert "refused on demand" in edge.status()["lastRefusal"]
    flag.unlink()
    edge.set_apps([app("/nginx", 10000, [31001]), app("/other", 10005, [31001])])
    wait_until(lambda: edge.curl("http://127.0.0.1:10005/").startswith("b31001"), message="the next change applied")


def test_haproxy_killed_is_restarted_and_marathon_away_keeps_the_configuration(edge: Edge) -> None:
    edge.backend(31001)
    edge.backend(31002)
    edge.marathon([app("/nginx", 10000, [31001])])
    edge.lb()
    wait_until(lambda: edge.curl("http://127.0.0.1:10000/").startswith("b31001"), message="nginx_10000 served")
    old = worker_pid(edge)
    masters = [int(p) for p in edge.ns.run("pgrep", "-x", "haproxy").stdout.split()]
    for pid in masters:
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: edge.metric("navstar_marathon_lb_haproxy_restarts_total") >= 1, message="a restart")
    wait_until(lambda: edge.curl("http://127.0.0.1:10000/").startswith("b31001"), message="served again")
    assert worker_pid(edge) != old

    edge.stop("marathon")
    wait_until(lambda: edge.metric("navstar_marathon_lb_marathon_connected") == 0, message="stream lost")
    for _ in range(5):
        assert edge.curl("http://127.0.0.1:10000/").startswith("b31001")
    edge.marathon([app("/nginx", 10000, [31002])])
    wait_until(lambda: edge.answers("http://127.0.0.1:10000/", tries=4) == {"b31002"},
               message="the new Marathon's tasks after reconnecting")


def test_autoscale_reads_haproxy_and_scales_through_marathon(edge: Edge) -> None:
    edge.backend(31001)
    edge.marathon([app("/nginx", 10000, [31001], HAPROXY_0_MODE="http")])     # requests are counted in http mode
    edge.lb()
    wait_until(lambda: edge.curl("http://127.0.0.1:10000/").startswith("b31001"), message="nginx_10000 served")
    edge.spawn("autoscale", sys.executable, "-m", "navstar", "marathon-lb-autoscale", "--marathon", MARATHON,
               "--haproxy", "http://127.0.0.1:9090", "--apps", "nginx_10000", "--target-rps", "50",
               "--interval", "0.5", "--samples", "2", "--cooldown", "1", "--min-instances", "1",
               "--max-instances", "3")

    def instances() -> int:
        return int(json.loads(edge.curl(f"{MARATHON}/v2/apps/nginx"))["app"]["instances"])

    load = edge.ns.popen("wrk", "-t1", "-c4", "-d60s", "http://127.0.0.1:10000/", stdout=subprocess.DEVNULL)
    try:
        wait_until(lambda: instances() == 3, message="scaled up to --max-instances under load")
    finally:
        load.terminate()
        load.wait(timeout=10)
    wait_until(lambda: instances() == 1, message="back to --min-instances once the load stopped")
    assert "scaling /nginx from 1 to 3 instances" in (edge.tmp / "autoscale.log").read_text()
