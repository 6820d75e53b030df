"""marathon-lb's HAProxy vs straight to the backends, same run; scaling under load; 1,000 apps.

In one namespace made here (removed after): 3 nginx backends, a real-HTTP fake Marathon
(``marathon_lb.fake_marathon``) and ``navstar marathon-lb`` driving Debian's HAProxy on :10000.

1. keep-alive requests/s (wrk) through HAProxy ÷ straight to the same 3 nginx (3 wrk at once,
   one per backend, the same threads and connections in total), rounds interleaved;
2. the same with ``Connection: close`` (a new connection per request) — new connections/s;
3. wrk through :10000 while the app scales 1 → 5 → 2, then a rolling restart (2 new tasks, the old
   ones killed first, as Marathon kills before its event arrives) and a reload (a second app): the
   failed requests (non-2xx and socket errors) must be 0;
4. plan + render + ``haproxy -c`` + reload for 1,000 apps × 3 tasks (one frontend each).

    .venv/bin/python -m bench.marathon_lb [--seconds 5] [--rounds 3] [--connections 48]

Goals: keep-alive ≥ 0.8×, new connections ≥ 0.7×, 0 failed requests while scaling, 1,000 apps
rendered and applied < 1 s. Exits 1 when a goal is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench._results import quick, record
from marathon_lb.applier import Applier
from marathon_lb.haproxy import HaproxyProcess
from marathon_lb.plan import plan
from marathon_lb.render import Settings
from navstar.namespaces import remove_namespace

REPO = Path(__file__).resolve().parents[1]
MARATHON = "http://127.0.0.1:8080"
PORTS = list(range(18081, 18091))      # backend ports (127.0.0.1)
NGINX = """worker_processes 1;
daemon off;
pid {dir}/nginx-{port}.pid;
error_log stderr;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {dir}/tmp; proxy_temp_path {dir}/tmp; fastcgi_temp_path {dir}/tmp;
    uwsgi_temp_path {dir}/tmp; scgi_temp_path {dir}/tmp;
    server {{ listen 127.0.0.1:{port} backlog=4096; location / {{ return 200 "nginx {port}\\n"; }} }}
}}
"""


def app(app_id: str, service_port: int, ports: list[int]) -> dict[str, Any]:
    return {"id": app_id, "labels": {"HAPROXY_GROUP": "external", "HAPROXY_0_MODE": "http"},
            "portDefinitions": [{"port": service_port}],
            "tasks": [{"id": f"{app_id.strip('/')}.{p}", "host": "127.0.0.1", "ports": [p], "state": "TASK_RUNNING"}
                      for p in ports]}


class Bench:
    def __init__(self) -> None:
        self.ns = f"nvb-mlb-{uuid.uuid4().hex[:6]}"
        self.dir = Path(tempfile.mkdtemp(prefix="bench-mlb-"))
        (self.dir / "tmp").mkdir()
        self.nginx: dict[int, subprocess.Popen[bytes]] = {}
        self.procs: list[subprocess.Popen[bytes]] = []

    def argv(self, *command: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *command]

    def run(self, *command: str, timeout: float = 120) -> str:
        return subprocess.run(self.argv(*command), capture_output=True, text=True, timeout=timeout).stdout

    def spawn(self, name: str, *command: str) -> subprocess.Popen[bytes]:
        log = open(self.dir / f"{name}.log", "ab")
        proc = subprocess.Popen(self.argv(*command), stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        self.procs.append(proc)
        return proc

    def up(self) -> None:
        subprocess.run(["ip", "netns", "add", self.ns], check=True)
        subprocess.run(self.argv("ip", "link", "set", "lo", "up"), check=True)

    def start_nginx(self, port: int) -> None:
        conf = self.dir / f"nginx-{port}.conf"
        conf.write_text(NGINX.format(dir=self.dir, port=port))
        self.nginx[port] = self.spawn(f"nginx-{port}", "nginx", "-c", str(conf), "-e", "stderr")
        self.wait(lambda: self.curl(f"http://127.0.0.1:{port}/").startswith("nginx"), f"nginx on {port}")

    def stop_nginx(self, port: int) -> None:
        proc = self.nginx.pop(port)
        proc.terminate()
        proc.wait(timeout=10)

    def curl(self, url: str) -> str:
        return self.run("curl", "-s", "--max-time", "3", url, timeout=10)

    @staticmethod
    def wait(check: Any, what: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise SystemExit(f"timed out waiting for {what}")
            time.sleep(0.05)

    def set_apps(self, apps: list[dict[str, Any]]) -> None:
        self.run("curl", "-sf", "-X", "PUT", "-H", "Content-Type: application/json", "--data-binary",
                 json.dumps(apps), f"{MARATHON}/_fake/apps")

    def status(self) -> dict[str, Any]:
        text = self.curl("http://127.0.0.1:9090/_marathon_lb/status")
        return dict(json.loads(text)) if text.startswith("{") else {}

    def servers(self) -> list[str]:
        backends = self.status().get("backends", [])
        return sorted(s for b in backends if b["name"] == "web_10000" for s in b["servers"])

    def start_edge(self, apps: list[dict[str, Any]]) -> None:
        (self.dir / "apps.json").write_text(json.dumps(apps))
        self.spawn("marathon", sys.executable, "-m", "marathon_lb.fake_marathon", "--listen", "127.0.0.1:8080",
                   "--apps", str(self.dir / "apps.json"))
        self.wait(lambda: '"apps"' in self.curl(f"{MARATHON}/v2/apps"), "the fake Marathon")
        self.spawn("marathon-lb", sys.executable, "-m", "navstar", "marathon-lb", "--marathon", MARATHON,
                   "--group", "external", "--haproxy-dir", str(self.dir / "haproxy"), "--coalesce", "0.05")
        self.wait(lambda: len(self.servers()) == len(apps[0]["tasks"]), "marathon-lb serving web_10000")

    def wrk(self, urls: list[str], seconds: float, connections: int, close: bool = False) -> dict[str, float]:
        """wrk against each URL at once (connections and 2 threads shared out); summed results."""
        extra = ["-H", "Connection: close"] if close else []
        each = max(1, connections // len(urls))
        threads = 2 if len(urls) == 1 else 1
        procs = [subprocess.Popen(self.argv("wrk", f"-t{threads}", f"-c{each}", f"-d{seconds:g}s", "--timeout", "5s",
                                            *extra, url), stdout=subprocess.PIPE, text=True) for url in urls]
        totals = {"rps": 0.0, "requests": 0.0, "failed": 0.0}
        for proc in procs:
            out, _ = proc.communicate(timeout=seconds + 60)
            totals["rps"] += float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))   # type: ignore[union-attr]
            totals["requests"] += float(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
            if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
                totals["failed"] += float(m.group(1))
            if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
                totals["failed"] += sum(float(x) for x in m.groups())
        return totals

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        remove_namespace(self.ns)
        subprocess.run(["rm", "-rf", str(self.dir)], check=False)


def ratio_rounds(bench: Bench, rounds: int, seconds: float, connections: int, close: bool) -> tuple[float, float, float]:
    direct_urls = [f"http://127.0.0.1:{p}/" for p in PORTS[:3]]
    ratios, proxied, direct = [], [], []
    for _ in range(rounds):
        d = bench.wrk(direct_urls, seconds, connections, close)
        p = bench.wrk(["http://127.0.0.1:10000/"], seconds, connections, close)
        direct.append(d["rps"])
        proxied.append(p["rps"])
        ratios.append(p["rps"] / d["rps"])
    return statistics.median(ratios), statistics.median(proxied), statistics.median(direct)


def wrk_failures(out: str) -> tuple[float, float, str]:
    """wrk's requests, failed requests (non-2xx and socket errors), and what failed."""
    requests = float(re.search(r"(\d+) requests in", out).group(1))   # type: ignore[union-attr]
    failed, what = 0.0, []
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        failed += float(m.group(1))
        what.append(f"non-2xx {m.group(1)}")
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        failed += sum(float(x) for x in m.groups())
        what.append(m.group(0))
    return requests, failed, "; ".join(what)


def under_load(bench: Bench, connections: int, name: str, change: Any, seconds: float = 3.0) -> tuple[float, float]:
    """wrk through :10000 for ``seconds`` with ``change()`` done in the middle; requests and failures."""
    wrk = subprocess.Popen(bench.argv("wrk", "-t2", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "5s",
                                      "http://127.0.0.1:10000/"), stdout=subprocess.PIPE, text=True)
    time.sleep(seconds / 3)
    change()
    out, _ = wrk.communicate(timeout=seconds + 60)
    requests, failed, what = wrk_failures(out)
    print(f"  {name}: {requests:,.0f} requests, {failed:.0f} failed{' (' + what + ')' if what else ''}")
    return requests, failed


def scaling_under_load(bench: Bench, connections: int) -> dict[str, float]:
    """wrk through :10000 while the app scales 1 → 5 → 2, restarts its tasks, and a reload happens."""
    def up() -> None:
        for port in PORTS[1:5]:
            bench.start_nginx(port)
        bench.set_apps([app("/web", 10000, PORTS[:5])])                       # 1 → 5
        bench.wait(lambda: len(bench.servers()) == 5, "5 servers")

    def down() -> None:
        for port in PORTS[2:5]:
            bench.stop_nginx(port)                                            # Marathon kills, then tells
        bench.set_apps([app("/web", 10000, PORTS[:2])])                       # 5 → 2
        bench.wait(lambda: len(bench.servers()) == 2, "2 servers")

    def rolling() -> None:
        for port in PORTS[5:7]:
            bench.start_nginx(port)                                           # new tasks up and added,
        bench.set_apps([app("/web", 10000, PORTS[:2] + PORTS[5:7])])
        bench.wait(lambda: len(bench.servers()) == 4, "4 servers")
        for port in PORTS[:2]:
            bench.stop_nginx(port)                                            # the old ones killed, then removed
        bench.set_apps([app("/web", 10000, PORTS[5:7])])
        bench.wait(lambda: len(bench.servers()) == 2, "the restarted 2 servers")

    def reload() -> None:
        pid = bench.status().get("haproxyWorkerPid")
        bench.set_apps([app("/web", 10000, PORTS[5:7]), app("/other", 10001, PORTS[5:6])])    # a new frontend
        bench.wait(lambda: bench.status().get("haproxyWorkerPid") != pid, "a reload")

    total = {"requests": 0.0, "failed": 0.0}
    for name, change in (("1 → 5", up), ("5 → 2", down), ("rolling restart", rolling), ("reload", reload)):
        requests, failed = under_load(bench, connections, name, change)
        total["requests"] += requests
        total["failed"] += failed
    return total


async def thousand_apps(bench: Bench) -> float:
    wrapper = bench.dir / "haproxy-in-ns"
    wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {bench.ns} /usr/sbin/haproxy "$@"\n')
    wrapper.chmod(0o755)
    run_dir = bench.dir / "thousand"
    settings = Settings(run_dir, stats_port=19090, http_port=0, bind_address="127.0.0.2", maxconn=4096)
    haproxy = HaproxyProcess(run_dir / "haproxy.cfg", settings.admin_socket, settings.master_socket, str(wrapper))
    applier = Applier(haproxy, settings)
    apps = [app(f"/svc/app{i:04d}", 20000 + i, [31000 + (i + k) % 1000 for k in range(3)]) for i in range(1000)]
    try:
        await applier.apply(plan(apps[:1], "external"))            # HAProxy up on a small configuration
        started = time.perf_counter()
        outcome = await applier.apply(plan(apps, "external", reserved_ports=settings.reserved_ports))
        seconds = time.perf_counter() - started
        if outcome != "reload":
            raise SystemExit(f"1,000 apps were not applied: {outcome} ({applier.status.last_refusal or applier.status.last_error})")
        return seconds
    finally:
        await applier.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0 if quick() else 5.0)
    parser.add_argument("--rounds", type=int, default=2 if quick() else 3)
    parser.add_argument("--connections", type=int, default=48)
    args = parser.parse_args()
    bench = Bench()
    ok = True
    try:
        bench.up()
        for port in PORTS[:3]:
            bench.start_nginx(port)
        bench.start_edge([app("/web", 10000, PORTS[:3])])
        keep, keep_p, keep_d = ratio_rounds(bench, args.rounds, args.seconds, args.connections, close=False)
        print(f"keep-alive: through HAProxy {keep_p:,.0f} req/s, direct {keep_d:,.0f} req/s: {keep:.2f}× (goal ≥ 0.8)")
        record("edge/direct", keep, "ratio", goal=">= 0.8", met=keep >= 0.8)
        fresh, fresh_p, fresh_d = ratio_rounds(bench, args.rounds, args.seconds, args.connections, close=True)
        print(f"new connections: through HAProxy {fresh_p:,.0f}/s, direct {fresh_d:,.0f}/s: {fresh:.2f}× (goal ≥ 0.7)")
        record("edge.new_connections/direct", fresh, "ratio", goal=">= 0.7", met=fresh >= 0.7)
        ok = keep >= 0.8 and fresh >= 0.7
        bench.set_apps([app("/web", 10000, PORTS[:1])])
        bench.wait(lambda: len(bench.servers()) == 1, "1 server")
        for port in PORTS[1:3]:
            bench.stop_nginx(port)
        scaled = scaling_under_load(bench, args.connections)
        print(f"scaling 1→5→2, rolling restart, reload under wrk: {scaled['requests']:,.0f} requests, "
              f"{scaled['failed']:.0f} failed (goal 0)")
        record("edge.scaling_failed_requests", scaled["failed"], "requests", goal="== 0", met=scaled["failed"] == 0,
               requests=scaled["requests"])
        ok = ok and scaled["failed"] == 0
        seconds = asyncio.run(thousand_apps(bench))
        print(f"1,000 apps: plan + render + haproxy -c + reload in {seconds:.3f} s (goal < 1 s)")
        record("edge.apply_1k_s", seconds, "s", goal="< 1", met=seconds < 1.0)
        ok = ok and seconds < 1.0
    finally:
        bench.close()
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
