"""``navstar lab scenario frameworks``: Marathon apps and two batch frameworks (roles weighted 1
and 2) competing for a full lab, each framework's dominant share printed until DRF settles.

```
PUT /mesos/weights (batch-light 1, batch-heavy 2) ─► POST /marathon/v2/apps: a web app and two
batch frameworks (python -m batch, Admin Router /service/<name>/) ─► both subscribe ─► a job each
big enough to fill the lab ─► every second: /mesos/master/frameworks (used + offered
resources: what DRF counts as allocated) ÷ the agents' totals = dominant shares ─► settled when heavy ÷ light stays within 10% of 2 for five
samples on average ─► the apps are removed, the frameworks torn down (POST /mesos/master/teardown)
```
Everything goes through Admin Router, as an operator's tools would.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from navstar.lab import LabError, LabState

REPO = Path(__file__).resolve().parents[1]
FRAMEWORKS = {"batch-light": ("batch-light", 1.0), "batch-heavy": ("batch-heavy", 2.0)}   # name → (role, weight)
TASK_CPUS = 0.25
SETTLED_SAMPLES = 5
TOLERANCE = 0.10


@dataclass
class Sample:
    at: float
    shares: dict[str, float]             # framework name → dominant share of the cluster

    def ratio(self) -> float | None:
        light, heavy = self.shares.get("batch-light", 0.0), self.shares.get("batch-heavy", 0.0)
        return heavy / light if light > 0 else None


@dataclass
class FrameworksOutcome:
    samples: list[Sample] = field(default_factory=list)
    settled_after: float | None = None
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)


def _batch_app(name: str, role: str, mesos_url: str, secret: str) -> dict[str, Any]:
    return {
        "id": f"/{name}", "instances": 1, "cpus": 0.1, "mem": 128,
        "cmd": f"{sys.executable} -m batch --master {mesos_url} --listen 0.0.0.0:$PORT0 --name {name} --role {role}",
        "env": {"MESOS_SECRET": secret, "PYTHONPATH": str(REPO)},
        "portDefinitions": [{"port": 0, "name": "api"}],
        "labels": {"DCOS_SERVICE_NAME": name},
        "healthChecks": [{"protocol": "HTTP", "path": "/ping", "portIndex": 0, "intervalSeconds": 1,
                          "gracePeriodSeconds": 30}],
    }


WEB_APP = {"id": "/frameworks-web", "instances": 2, "cpus": 0.5, "mem": 64,
           "cmd": "python3 -m http.server $PORT0", "portDefinitions": [{"port": 0}]}


def _totals(state: dict[str, Any]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for slave in state["slaves"]:
        if slave.get("active"):
            for name in ("cpus", "mem"):
                totals[name] = totals.get(name, 0.0) + float(slave["resources"].get(name, 0))
    return totals


def _held(framework: dict[str, Any]) -> dict[str, float]:
    """Used plus offered: what DRF counts as the framework's allocation."""
    held: dict[str, float] = {}
    for part in (framework.get("used_resources", {}), framework.get("offered_resources", {})):
        for name, value in part.items():
            if isinstance(value, int | float):
                held[name] = held.get(name, 0.0) + float(value)
    return held


def _dominant(used: dict[str, Any], totals: dict[str, float]) -> float:
    return max((float(used.get(name, 0)) / total for name, total in totals.items() if total > 0), default=0.0)


def run_frameworks(state: LabState, console: Console, timeout: float = 120.0) -> FrameworksOutcome:
    """Raises ``LabError`` when a step the scenario needs fails."""
    secret = state.secret() or ""
    headers = {"Authorization": f"token={secret}"}
    outcome = FrameworksOutcome()
    agents = [n for n in state.nodes if n not in state.master_nodes and not n.public]
    with httpx.Client(base_url=state.front_door, headers=headers, timeout=15) as http:
        weights = [{"role": role, "weight": weight} for role, weight in FRAMEWORKS.values()]
        resp = http.put("/mesos/weights", json=weights)
        if resp.status_code != 200:
            raise LabError(f"PUT /mesos/weights: HTTP {resp.status_code} {resp.text[:200]}")
        console.print("weights: " + ", ".join(f"{w['role']}={w['weight']:g}" for w in weights))
        apps = [WEB_APP] + [_batch_app(name, role, state.inside_mesos_url, secret)
                            for name, (role, _w) in FRAMEWORKS.items()]
        try:
            for app in apps:
                resp = http.post("/marathon/v2/apps", json=app)
                if resp.status_code not in (200, 201, 409):
                    raise LabError(f"POST {app['id']}: HTTP {resp.status_code} {resp.text[:200]}")
            console.print("Marathon apps: " + ", ".join(a["id"] for a in apps))
            _wait_subscribed(http, timeout)
            cluster = http.get("/mesos/master/state").json()
            totals = _totals(cluster)
            # Enough tasks that each framework alone would fill the lab for ~30 s (3 s tasks).
            slots = int(totals.get("cpus", 0) / TASK_CPUS)
            jobs = {"batch-light": slots * 4, "batch-heavy": slots * 8}
            for name, count in jobs.items():
                resp = http.post(f"/service/{name}/v1/jobs", json={"cmd": "sleep 3", "parallel": count,
                                                                   "cpus": TASK_CPUS, "mem": 16})
                if resp.status_code != 201:
                    raise LabError(f"job for {name}: HTTP {resp.status_code} {resp.text[:200]}")
                outcome.jobs[name] = resp.json()
            console.print(f"jobs: batch-light {jobs['batch-light']} × sleep 3, batch-heavy {jobs['batch-heavy']} × "
                          f"sleep 3 ({TASK_CPUS:g} cpus each) on {len(agents)} agents, "
                          f"{totals.get('cpus', 0):g} cpus")
            _sample_until_settled(http, totals, outcome, console, timeout)
        finally:
            for app in apps:
                http.delete(f"/marathon/v2/apps{app['id']}", params={"force": "true"})
            # Their schedulers are gone: the operator tears the frameworks down (their running
            # tasks are killed now rather than after the failover timeout).
            for framework in http.get("/mesos/master/frameworks").json()["frameworks"]:
                if framework["name"] in FRAMEWORKS:
                    http.post("/mesos/master/teardown", data={"frameworkId": framework["id"]})
    return outcome


def _wait_subscribed(http: httpx.Client, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        frameworks = http.get("/mesos/master/frameworks").json()["frameworks"]
        if {f["name"] for f in frameworks if f.get("connected")} >= set(FRAMEWORKS):
            return
        time.sleep(0.5)
    raise LabError(f"the batch frameworks did not subscribe within {timeout:g}s")


def _sample_until_settled(http: httpx.Client, totals: dict[str, float], outcome: FrameworksOutcome,
                          console: Console, timeout: float) -> None:
    started = time.monotonic()
    table = Table(title="dominant shares (used + offered ÷ the agents' totals)")
    for column in ("t (s)", "marathon", "batch-light (w 1)", "batch-heavy (w 2)", "heavy ÷ light"):
        table.add_column(column, justify="right")
    while time.monotonic() - started < timeout:
        frameworks = http.get("/mesos/master/frameworks").json()["frameworks"]
        shares = {f["name"]: _dominant(_held(f), totals) for f in frameworks}
        sample = Sample(time.monotonic() - started, shares)
        outcome.samples.append(sample)
        ratio = sample.ratio()
        line = (f"{sample.at:5.1f}", f"{shares.get('marathon', 0):.2f}", f"{shares.get('batch-light', 0):.2f}",
                f"{shares.get('batch-heavy', 0):.2f}", f"{ratio:.2f}" if ratio is not None else "-")
        table.add_row(*line)
        console.print("  ".join(f"{c}={v}" for c, v in zip(("t", "marathon", "light", "heavy", "ratio"), line,
                                                              strict=True)))
        recent = [r for r in (s.ratio() for s in outcome.samples[-SETTLED_SAMPLES:]) if r is not None]
        # Settled: the last samples' ratio averages within 10% of 2 (single samples move by a task).
        if len(recent) == SETTLED_SAMPLES and abs(sum(recent) / SETTLED_SAMPLES - 2.0) <= 2.0 * TOLERANCE:
            outcome.settled_after = sample.at
            break
        time.sleep(1.0)
    console.print(table)
