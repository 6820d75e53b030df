"""Several masters: how long a ``kill -9`` of the leader stops writes, and what the ZooKeeper
store costs against SQLite.

- Failover: on a ``--masters 3`` lab, ``kill -9`` of the leading master's process, then
  ``POST /v2/apps`` through Admin Router on a surviving master every 0.1 s (2 s per try) until
  one is accepted; the killed master is started again (it rejoins as a follower) before the
  next round. Goal (issue 15): p50 under 5 s over 10 failovers (Marathon's own: tens of seconds).
- Store rate (peer: SQLite in the same run): app creates (POST) and scales (PUT ``instances``)
  through the Marathon API, 8 calls in flight (in process, ASGI: validation, version,
  deployment, named VIPs, every store write — ZooKeeper commits what the requests in flight
  changed together, one transaction before each answer) with fake agents, once on
  ``SqliteStore`` in a directory and once on ``ZkStore`` on the lab's ensemble (from master-1's
  namespace; its own path, removed after). Goal: ZooKeeper ÷ SQLite ≥ 0.5.

Run: flock /tmp/navstar-lab.lock .venv/bin/python -m bench.master_failover [--rounds 10] [--apps 300]
Builds lab ``failover`` (``--masters 3 --agents 2``) on 198.18.0.0/24 and takes it down after
(unless ``--keep``). Exits 1 when a goal is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time

import httpx

from bench._results import quick, record
from control.auth import auth_header
from navstar import lab_masters
from navstar.lab import Lab, LabState

FAILOVER_GOAL_S = 5.0
RATE_GOAL = 0.5


def accepted(client: httpx.Client, app_id: str) -> bool:
    try:
        resp = client.post("/v2/apps", json={"id": app_id, "cmd": "sleep 3600", "cpus": 0.01, "mem": 8},
                           timeout=2.0)
    except httpx.HTTPError:
        return False
    return resp.status_code in (200, 201)


def failover_round(lab: Lab, n: int) -> float:
    state = lab.state()      # read again: a restarted master has a new pid
    assert state is not None
    ips = lab_masters.election(state.master_nodes)
    leader = next(m for m in state.master_nodes if m.ip == ips[0])
    survivor = next(m for m in state.master_nodes if m.name != leader.name)
    assert leader.pid is not None
    with httpx.Client(base_url=f"http://{survivor.ip}/service/marathon", headers=auth_header(state.secret())) as client:
        started = time.monotonic()
        os.kill(leader.pid, signal.SIGKILL)
        while not accepted(client, f"/failover-{n}"):
            if time.monotonic() - started > 60:
                raise RuntimeError(f"no write accepted within 60 s of killing {leader.name}")
            time.sleep(0.1)
        took = time.monotonic() - started
        client.delete(f"/v2/apps/failover-{n}", params={"force": "true"}, timeout=10)
    print(f"  round {n}: killed {leader.name} (leader) → POST accepted via {survivor.name}'s Admin Router "
          f"after {took:.2f} s", flush=True)
    lab.restart(leader.name)
    deadline = time.monotonic() + 60
    while len(lab_masters.election(state.master_nodes)) < len(state.master_nodes):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{leader.name} did not rejoin the election")
        time.sleep(0.3)
    return took


RATE_SCRIPT = """
import asyncio, json, sys, tempfile, time, uuid
import httpx
from control.agent_client import FakeAgents
from control.http import master_apps
from control.master import Master
from control.store import SqliteStore
from control.store_zk import ZkStore
from control.zk import ZkUrl, connect

apps, url, concurrency = int(sys.argv[1]), ZkUrl.parse(sys.argv[2]), int(sys.argv[3])

async def rate(store):
    master = Master(agent_client=FakeAgents(), store=store, advertise_ip="127.0.0.1")
    transport = httpx.ASGITransport(app=master_apps(master).marathon)
    async with httpx.AsyncClient(transport=transport, base_url="http://master") as client:
        async def one(i):
            body = {"id": f"/rate/a{i}", "cmd": "sleep 1", "cpus": 0.01, "mem": 8,
                    "portDefinitions": [{"port": 0, "labels": {"VIP_0": f"/rate-a{i}:80"}}]}
            created = await client.post("/v2/apps", json=body)
            assert created.status_code == 201, created.text
            scaled = await client.put(f"/v2/apps/rate/a{i}", params={"force": "true"}, json={"instances": 2})
            assert scaled.status_code == 200, scaled.text

        async def worker(k):
            for i in range(k, apps, concurrency):
                await one(i)

        started = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        return 2 * apps / (time.perf_counter() - started)

with tempfile.TemporaryDirectory() as tmp:
    sqlite = asyncio.run(rate(SqliteStore(tmp)))
client = connect(url, session_timeout=10.0)
path = f"/bench-{uuid.uuid4().hex[:8]}"
try:
    store = ZkStore(client, path)
    store.claim()
    zk = asyncio.run(rate(store))
finally:
    client.delete(path, recursive=True)
    client.stop()
print(json.dumps({"sqlite": sqlite, "zk": zk}))
"""


def store_rates(state: LabState, apps: int, concurrency: int) -> dict[str, float]:
    """Operations per second on each store, measured inside master-1's namespace (the ensemble
    is sealed in the lab)."""
    out = subprocess.run(["nsenter", f"--net=/run/netns/{state.master_nodes[0].namespace}", "--", sys.executable,
                          "-c", RATE_SCRIPT, str(apps), lab_masters.zk_url(state.master_nodes), str(concurrency)],
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"store rate run failed: {out.stderr[-2000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3 if quick() else 10)
    parser.add_argument("--apps", type=int, default=100 if quick() else 300, help="apps created then scaled")
    parser.add_argument("--concurrency", type=int, default=8, help="API calls in flight at once (both stores)")
    parser.add_argument("--lab", default="failover")
    parser.add_argument("--underlay", default="198.18.0.0/24")
    parser.add_argument("--keep", action="store_true", help="leave the lab up")
    args = parser.parse_args()

    lab = Lab(args.lab, progress=lambda msg: print(f"  lab: {msg}", flush=True))
    print(f"bench.master_failover — lab {args.lab!r} with 3 masters, {args.rounds} failovers, "
          f"{args.apps} apps created and scaled per store", flush=True)
    if not lab.is_up():
        lab.up(agents=2, underlay=args.underlay, masters=3)
    ok = True
    try:
        state = lab.state()
        assert state is not None and state.masters == 3, "the lab must have 3 masters"
        times = [failover_round(lab, n) for n in range(1, args.rounds + 1)]
        p50 = statistics.median(times)
        met = p50 < FAILOVER_GOAL_S
        ok &= met
        print(f"failover: p50 {p50:.2f} s, max {max(times):.2f} s over {len(times)} (goal p50 < {FAILOVER_GOAL_S:g} s)"
              f" {'met' if met else 'MISSED'}; session timeout {lab_masters.ZK_SESSION_TIMEOUT:g} s", flush=True)
        record("master.failover_p50_s", p50, "s", f"< {FAILOVER_GOAL_S:g}", met, rounds=len(times))
        record("master.failover_max_s", max(times), "s", rounds=len(times))
        record("ha.failover_s", p50, "s", f"< {FAILOVER_GOAL_S:g}", met, rounds=len(times),
               spread=[min(times), max(times)])

        rates = store_rates(state, args.apps, args.concurrency)
        ratio = rates["zk"] / rates["sqlite"]
        met = ratio >= RATE_GOAL
        ok &= met
        print(f"create/scale: SQLite {rates['sqlite']:.0f} ops/s, ZooKeeper {rates['zk']:.0f} ops/s → "
              f"ratio {ratio:.2f} (goal ≥ {RATE_GOAL:g}) {'met' if met else 'MISSED'}", flush=True)
        record("master.zk/sqlite", ratio, "×", f">= {RATE_GOAL:g}", met)
        record("master.create_scale_ops", rates["sqlite"], "ops/s", store="sqlite")
        record("master.create_scale_ops", rates["zk"], "ops/s", store="zookeeper")
    finally:
        if not args.keep:
            lab.down()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
