"""The edge scenario (``navstar lab scenario edge``): north–south traffic as the design article tells it.

```
examples/marathon-lb.json ──POST──► marathon-lb (HAProxy) on public-agent-1 (HOST network)
examples/nginx-marathon-lb.json ──POST──► nginx, servicePort 10000, on the private agents
root ns: curl http://<public agent>:10000/ ──► HAProxy frontend :10000 ──► nginx task
root ns: GET  http://<public agent>:9090/haproxy?stats;csv ──► the stats table
examples/marathon-lb-autoscale.json (short intervals) ──POST──► marathon-lb-autoscale
root ns: siege, more users each step ──► :10000 ──► autoscale reads req_tot ──► Marathon scales nginx
         siege stopped ──► the rate falls ──► autoscale scales nginx back to its minimum
```

Everything is printed as it happens on the console it is given. ``run_edge`` returns whether the
instances rose above the minimum under load and came back to it after.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from marathon_lb.autoscale import backend_counters
from navstar.lab import LabError, LabState, Node

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
NGINX_EXAMPLE = "nginx-marathon-lb.json"
LB_EXAMPLE = "marathon-lb.json"
AUTOSCALE_EXAMPLE = "marathon-lb-autoscale.json"
SERVICE_PORT = 10000
STATS_PORT = 9090
STATS_COLUMNS = ("pxname", "svname", "status", "addr", "scur", "stot", "req_tot", "hrsp_2xx", "hrsp_5xx")


@dataclass
class EdgeSettings:
    """The load and the autoscaler's policy (short intervals, so the story takes about a minute)."""

    target_rps: float = 20.0          # per nginx instance
    min_instances: int = 1
    max_instances: int = 8
    interval: float = 1.0             # autoscale: seconds between samples
    samples: int = 5
    cooldown: int = 3
    siege_users: tuple[int, ...] = (8, 16, 32, 64)   # siege -d 1: about 2.3 requests/s per user
    step_seconds: float = 10.0
    settle_timeout: float = 90.0


@dataclass
class Sample:
    at: float
    users: int
    rps: float
    instances: int
    running: int


@dataclass
class EdgeOutcome:
    public_agent: str = ""
    curl: str = ""
    stats: list[dict[str, str]] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    peak_instances: int = 0
    final_instances: int = 0
    siege: dict[str, Any] = field(default_factory=dict)

    @property
    def scaled_up_and_down(self) -> bool:
        return self.peak_instances > 1 and self.final_instances == 1


def example(name: str) -> dict[str, Any]:
    path = EXAMPLES / name
    if not path.exists():
        raise LabError(f"{path} is missing (the marathon_lb package provides it)")
    return json.loads(path.read_text())


def with_options(app: dict[str, Any], overrides: dict[str, str]) -> dict[str, Any]:
    """The app with ``--option value`` pairs set in its ``args`` (or its ``cmd``, split as a shell
    would): an option present gets the new value, a missing one is appended."""
    app = json.loads(json.dumps(app))
    words = list(app["args"]) if app.get("args") else shlex.split(app.get("cmd") or "")
    for option, value in overrides.items():
        if option in words:
            words[words.index(option) + 1] = value
        else:
            words += [option, value]
    if app.get("args"):
        app["args"] = words
    else:
        app["cmd"] = shlex.join(words)
    return app


def parse_stats(text: str) -> list[dict[str, str]]:
    """HAProxy's stats CSV (header line ``# pxname,svname,…``) → one dict per row."""
    return list(csv.DictReader(io.StringIO(text.lstrip("# "))))


class EdgeScenario:
    def __init__(self, state: LabState, console: Console, settings: EdgeSettings | None = None) -> None:
        self.state = state
        self.console = console
        self.settings = settings or EdgeSettings()
        publics = [n for n in state.nodes if n.public]
        if not publics:
            raise LabError(f"lab {state.name!r} has no public agent: "
                           f"navstar lab up --name {state.name} --public-agents 1")
        self.public: Node = publics[0]
        self.marathon = httpx.Client(base_url=state.master_url, timeout=10,
                                     headers={"Authorization": f"token={state.secret()}"})
        self.outcome = EdgeOutcome(public_agent=self.public.name)

    def close(self) -> None:
        self.marathon.close()

    # -- Marathon ---------------------------------------------------------------------------
    def deploy(self, app: dict[str, Any], what: str) -> str:
        app_id = "/" + app["id"].strip("/")
        resp = self.marathon.post("/v2/apps", json=app)
        if resp.status_code == 409:
            self.say(f"{what}: {app_id} is already deployed; keeping it")
        elif resp.status_code not in (200, 201):
            raise LabError(f"{what}: POST /v2/apps {app_id}: {resp.status_code} {resp.text[:300]}")
        else:
            self.say(f"{what}: POST /v2/apps {app_id}")
        return app_id

    def app(self, app_id: str) -> dict[str, Any]:
        resp = self.marathon.get(f"/v2/apps{app_id}", params={"embed": "app.tasks"})
        resp.raise_for_status()
        return resp.json()["app"]

    def running(self, app_id: str) -> list[dict[str, Any]]:
        tasks = self.app(app_id).get("tasks", [])
        return [t for t in tasks if t.get("state") == "TASK_RUNNING"
                and all(r.get("alive") for r in t.get("healthCheckResults") or [{"alive": True}])]

    def wait_running(self, app_id: str, count: int, timeout: float = 90.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            tasks = self.running(app_id)
            if len(tasks) >= count:
                return tasks
            time.sleep(0.5)
        raise LabError(f"{app_id}: not {count} running (and healthy) tasks within {timeout:.0f}s; "
                       f"see /v2/queue and navstar task list --lab {self.state.name}")

    def scale(self, app_id: str, instances: int) -> None:
        resp = self.marathon.put(f"/v2/apps{app_id}", params={"force": "true"}, json={"instances": instances})
        resp.raise_for_status()

    # -- the outside ------------------------------------------------------------------------
    def say(self, text: str) -> None:
        self.console.print(text, soft_wrap=True)

    def curl_outside(self, timeout: float = 60.0) -> str:
        url = f"http://{self.public.ip}:{SERVICE_PORT}/"
        self.say(f"[bold]$ curl {url}[/]   (from the root namespace, the lab's outside)")
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            done = subprocess.run(["curl", "-s", "-m", "2", "-w", "\\n%{http_code}", url], capture_output=True, text=True)
            body, _, code = done.stdout.rpartition("\n")
            if code == "200":
                self.console.print(body, markup=False, soft_wrap=True)
                return body
            last = code or done.stderr.strip()
            time.sleep(0.5)
        raise LabError(f"{url} did not answer 200 within {timeout:.0f}s (last: {last})")

    def stats(self) -> list[dict[str, str]]:
        resp = httpx.get(f"http://{self.public.ip}:{STATS_PORT}/haproxy?stats;csv", timeout=5)
        resp.raise_for_status()
        return parse_stats(resp.text)

    def print_stats(self, rows: list[dict[str, str]]) -> None:
        table = Table(title=f"HAProxy stats: http://{self.public.ip}:{STATS_PORT}/haproxy?stats;csv")
        for column in STATS_COLUMNS:
            table.add_column(column, overflow="fold")
        for row in rows:
            if row.get("pxname") in ("stats",) or row.get("status") == "MAINT":
                continue            # the stats listener itself, and free server slots
            table.add_row(*(row.get(c) or "" for c in STATS_COLUMNS))
        self.console.print(table)

    def request_total(self, backend: str) -> float | None:
        try:
            text = httpx.get(f"http://{self.public.ip}:{STATS_PORT}/haproxy?stats;csv", timeout=2).text
        except httpx.HTTPError:
            return None
        return backend_counters(text).get(backend)

    # -- load -------------------------------------------------------------------------------
    def siege(self, users: int) -> subprocess.Popen:
        url = f"http://{self.public.ip}:{SERVICE_PORT}/"
        self.say(f"[bold]$ siege -c {users} -d 1 {url}[/]")
        return subprocess.Popen(["siege", "-c", str(users), "-d", "1", "-t", "10M", url],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)

    def stop_siege(self, proc: subprocess.Popen) -> dict[str, Any]:
        """SIGINT (siege prints its summary), then the summary as siege's JSON."""
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        text = out + err
        start = text.find("{")
        try:
            return json.loads(text[start:text.rfind("}") + 1]) if start >= 0 else {}
        except ValueError:
            return {}


def run_edge(state: LabState, console: Console, settings: EdgeSettings | None = None,
             on_sample: Callable[[Sample], None] | None = None) -> EdgeOutcome:
    """The scenario, printed as it happens; raises ``LabError`` when a step cannot go on."""
    scenario = EdgeScenario(state, console, settings)
    try:
        return _run(scenario, on_sample)
    finally:
        scenario.close()


def _run(sc: EdgeScenario, on_sample: Callable[[Sample], None] | None) -> EdgeOutcome:
    s, out = sc.settings, sc.outcome
    lb_app = example(LB_EXAMPLE)
    nginx_app = example(NGINX_EXAMPLE)
    sc.say(f"[bold]1. marathon-lb on the public agent[/] {sc.public.name} ({sc.public.ip})")
    lb_id = sc.deploy(lb_app, f"examples/{LB_EXAMPLE}")
    lb_tasks = sc.wait_running(lb_id, 1)
    sc.say(f"   {lb_id} runs on {', '.join(sorted({t['slaveId'] for t in lb_tasks}))}")
    sc.say(f"[bold]2. the nginx app[/] examples/{NGINX_EXAMPLE} (servicePort {SERVICE_PORT}, HAPROXY_GROUP external)")
    nginx_id = sc.deploy(nginx_app, f"examples/{NGINX_EXAMPLE}")
    if sc.app(nginx_id)["instances"] != s.min_instances:
        sc.scale(nginx_id, s.min_instances)
    for task in sc.wait_running(nginx_id, s.min_instances):
        node = sc.state.node(task["slaveId"])
        sc.say(f"   {task['id']} on {task['slaveId']} {node.ip if node else task['host']}:{task['ports'][0]}")
    sc.say("[bold]3. from outside[/]")
    out.curl = sc.curl_outside()
    out.stats = sc.stats()
    sc.print_stats(out.stats)
    backend = f"{nginx_id.strip('/').replace('/', '_')}_{SERVICE_PORT}"
    auto = with_options(example(AUTOSCALE_EXAMPLE), {
        "--target-rps": f"{s.target_rps:g}", "--interval": f"{s.interval:g}", "--samples": str(s.samples),
        "--cooldown": str(s.cooldown), "--min-instances": str(s.min_instances),
        "--max-instances": str(s.max_instances), "--apps": backend})
    sc.say(f"[bold]4. marathon-lb-autoscale[/] (examples/{AUTOSCALE_EXAMPLE}, short intervals): "
           f"{auto.get('cmd') or shlex.join(auto.get('args') or [])}")
    auto_id = sc.deploy(auto, f"examples/{AUTOSCALE_EXAMPLE}")
    sc.wait_running(auto_id, 1)
    sc.say(f"[bold]5. siege[/]: more users every {s.step_seconds:g}s until autoscale adds nginx instances "
           f"(target {s.target_rps:g} req/s each, {s.min_instances}-{s.max_instances})")
    started = time.monotonic()
    last_total: tuple[float, float] | None = None
    last_instances = s.min_instances

    def sample(users: int) -> Sample:
        nonlocal last_total, last_instances
        now = time.monotonic()
        total = sc.request_total(backend)
        rps = 0.0
        if total is not None and last_total is not None and now > last_total[1]:
            rps = max(0.0, (total - last_total[0]) / (now - last_total[1]))
        if total is not None:
            last_total = (total, now)
        app = sc.app(nginx_id)
        running = sum(1 for t in app.get("tasks", []) if t.get("state") == "TASK_RUNNING")
        point = Sample(now - started, users, rps, app["instances"], running)
        out.samples.append(point)
        out.peak_instances = max(out.peak_instances, point.instances)
        if point.instances != last_instances:
            sc.say(f"   [bold yellow]→ marathon-lb-autoscale scaled {nginx_id} {last_instances} → "
                   f"{point.instances}[/]")
            last_instances = point.instances
        sc.say(f"   {point.at:5.1f}s  siege {users:3d} users  {backend} {rps:7.1f} req/s  "
               f"instances {point.instances} (running {running})")
        if on_sample:
            on_sample(point)
        return point

    proc: subprocess.Popen | None = None
    try:
        for users in s.siege_users:
            if proc is not None:
                sc.stop_siege(proc)
            proc = sc.siege(users)
            step_end = time.monotonic() + s.step_seconds
            while time.monotonic() < step_end:
                time.sleep(2)
                sample(users)
        # Hold the last load until the count settles at what autoscale computes for it.
        settle_end = time.monotonic() + s.settle_timeout
        steady, previous = 0, -1
        while time.monotonic() < settle_end and steady < s.cooldown + s.samples:
            time.sleep(2)
            point = sample(s.siege_users[-1])
            steady = steady + 1 if point.instances == previous and point.running == point.instances else 0
            previous = point.instances
    finally:
        if proc is not None:
            out.siege = sc.stop_siege(proc)
    if out.siege:
        sc.say(f"   siege: {out.siege.get('transactions')} requests, {out.siege.get('failed_transactions')} failed, "
               f"availability {out.siege.get('availability')}%")
    sc.say(f"[bold]6. load stopped[/]: waiting for autoscale to bring {nginx_id} back to {s.min_instances}")
    back_end = time.monotonic() + s.settle_timeout
    while time.monotonic() < back_end:
        time.sleep(2)
        point = sample(0)
        if point.instances == s.min_instances and point.running == s.min_instances:
            break
    out.final_instances = last_instances
    out.stats = sc.stats()
    sc.print_stats(out.stats)
    expected = math.ceil(max(p.rps for p in out.samples) / s.target_rps) if out.samples else 0
    sc.say(f"peak {out.peak_instances} instances (highest rate seen asks for {min(expected, s.max_instances)}), "
           f"back to {out.final_instances}")
    return out
