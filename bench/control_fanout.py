"""View fan-out at scale: a master with 1,000 agents, each long-polling its cluster view, and the
time from an app change until every agent holds a view with it.

Three processes on loopback, no kernel and no lab:

- the master (``--master``): the real ``Master`` and both its HTTP ports (uvicorn, as
  ``navstar master`` serves them, with a cluster secret), its agents in memory
  (``FakeAgents``: launches run at once and report ``TASK_RUNNING``);
- the simulated agents (``--agents-process``, two processes of 500): each one registers through
  ``POST /v1/agents`` like a real agent, then long-polls ``GET /v1/view?since=N&wait=30`` on
  its own keep-alive connection, the request ``control/agent/runtime.py`` makes (httpx's
  ``Accept-Encoding: gzip, deflate`` included; a gzip answer would be decompressed — the master
  answers plain JSON, bench/README says why), and notes when a view first names each change's VIP (``"marathon:/fanout-NN"``
  in ``vip_addresses``) — a byte search, not a parse, so the clients stay light;
- this driver: ``POST /v2/apps`` of a one-task app with a named VIP, one change every
  ``--interval`` seconds (beyond the master's longest pacing of view wake-ups, 1 s in a burst,
  so each change is handed out on its own), reading the master's CPU time from ``/proc``
  around the run.

Per change: the first and the last agent to hold it (seconds after the POST was sent). Reported:
p50 and p99 over the changes of the last agent's time (every agent holds the new view), the
spread (last − first: the fan-out proper), and master CPU seconds per change.

Goal (issue 17): p99 < 1 s. Peer: none in the same run (the goal is absolute). All three
processes share this machine's cores: the agents' reading of 1,000 views competes with the master.

Run: .venv/bin/python -m bench.control_fanout [--agents 1000] [--changes 20]
Exits 1 when the goal is missed or a change does not reach every agent.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import httpx

from bench._results import quick, record

GOAL_P99_S = 1.0
SECRET = "fanout-bench-secret"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SETTLED_SHARE = 0.05     # of a core, over a second: the master at rest
VERSION = re.compile(rb'"version":(\d+)')


def change_name(index: int) -> str:
    return f"fanout-{index:02d}"


def marker(index: int) -> bytes:
    """What a view holding change ``index`` contains: its VIP's key in ``vip_addresses``."""
    return f'"marathon:/{change_name(index)}"'.encode()


def registration(index: int) -> dict:
    return {"agent_id": f"sim-{index:04d}", "hostname": f"sim-{index:04d}",
            "ip": f"10.{(index >> 16) & 255}.{(index >> 8) & 255}.{index & 255}",
            "resources": {"cpus": 4, "mem": 8192, "disk": 10000, "ports": [{"begin": 31000, "end": 32000}]}}


def seen_changes(body: bytes, next_change: int, changes: int) -> int:
    """The index of the first change ``body`` does not hold yet, from ``next_change`` on (changes
    are made in order, so a view holding change k holds every earlier one)."""
    while next_change < changes and marker(next_change) in body:
        next_change += 1
    return next_change


def process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def settle(pid: int, timeout: float = 60.0) -> float:
    """Waits until the master is at rest — the thousand registrations' reconciliations and view
    wake-ups behind it — so the changes measure fan-out, not the start; seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        before = process_cpu(pid)
        time.sleep(1.0)
        if process_cpu(pid) - before < SETTLED_SHARE:
            break
    return time.monotonic() - started


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the master process ----------------------------------------------------------------------
def master_main(spec: dict) -> None:
    from control.agent_client import FakeAgents
    from control.http import master_apps
    from control.master import Master
    from navstar.servers import Listen, serve

    fake = FakeAgents()
    master = Master(secret=SECRET, agent_client=fake, state_dir=spec["state_dir"], advertise_ip="127.0.0.1",
                    mesos_port=spec["mesos"], marathon_port=spec["marathon"], agent_timeout=600.0)
    fake.sink = master.scheduler.on_status
    apps = master_apps(master)
    try:
        asyncio.run(serve([(apps.marathon, Listen("127.0.0.1", spec["marathon"])),
                           (apps.mesos, Listen("127.0.0.1", spec["mesos"]))], background=master.background()))
    finally:
        master.close()


# -- the simulated agents --------------------------------------------------------------------
async def _agent(spec: dict, index: int, ready: asyncio.Event, started: set[int], seen: dict[int, float],
                 stop: asyncio.Event) -> None:
    host, port = "127.0.0.1", spec["mesos"]
    auth = f"Authorization: token={SECRET}\r\n"
    body = json.dumps(registration(index)).encode()
    reader, writer = await asyncio.open_connection(host, port)
    try:
        async def exchange(request: bytes) -> bytes:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.lower().split(b"\r\n")
            length = next(int(line.split(b":", 1)[1]) for line in lines if line.startswith(b"content-length:"))
            payload = await reader.readexactly(length)
            if b"content-encoding: gzip" in lines:
                payload = zlib.decompress(payload, wbits=31)
            if head[9:12] != b"200":
                raise SystemExit(f"HTTP {head[9:12].decode()} from the master: {payload[:300]!r}")
            return payload

        await exchange(f"POST /v1/agents HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Type: application/json\r\n"
                       f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        version, next_change, changes = 0, 0, spec["changes"]
        while not stop.is_set():
            request = (f"GET /v1/view?since={version}&wait=30 HTTP/1.1\r\nHost: {host}\r\n{auth}"
                       "Accept-Encoding: gzip, deflate\r\n\r\n").encode()
            view = await exchange(request)
            arrived = time.monotonic()
            found = VERSION.search(view[:64])
            version = int(found.group(1)) if found else version
            if index not in started:
                started.add(index)
                if len(started) == spec["count"]:
                    ready.set()
            now_seen = seen_changes(view, next_change, changes)
            for change in range(next_change, now_seen):
                seen[change] = arrived
            next_change = now_seen
    finally:
        writer.close()


async def _agents(spec: dict) -> dict[int, dict[int, float]]:
    ready, stop = asyncio.Event(), asyncio.Event()
    started: set[int] = set()
    seen: dict[int, dict[int, float]] = {i: {} for i in spec["indexes"]}
    spec["count"] = len(spec["indexes"])
    tasks = [asyncio.create_task(_agent(spec, i, ready, started, seen[i], stop)) for i in spec["indexes"]]
    waiting = asyncio.create_task(ready.wait())
    done, _ = await asyncio.wait([waiting, *tasks], return_when=asyncio.FIRST_COMPLETED)
    for task in done:
        if task is not waiting:
            task.result()       # an agent failed before all were following: raise it
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)     # the driver says when the run is over
    stop.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return seen


def agents_main(spec: dict) -> None:
    seen = asyncio.run(_agents(spec))
    print(json.dumps({str(agent): {str(c): t for c, t in changes.items()} for agent, changes in seen.items()}),
          flush=True)


# -- the driver ------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--changes", type=int, default=5 if quick() else 20)
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between app changes")
    parser.add_argument("--processes", type=int, default=2, help="processes the simulated agents run in")
    parser.add_argument("--master", help=argparse.SUPPRESS)
    parser.add_argument("--agents-process", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.master:
        master_main(json.loads(args.master))
        return 0
    if args.agents_process:
        agents_main(json.loads(args.agents_process))
        return 0

    marathon_port, mesos_port = free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="navstar-fanout-") as state_dir:
        spec = {"marathon": marathon_port, "mesos": mesos_port, "state_dir": state_dir}
        master_log = Path(state_dir) / "master.log"
        with master_log.open("w") as log:
            # Its log (uvicorn cancels the idle long-polls at shutdown, loudly) is shown only on a failure.
            master = subprocess.Popen([sys.executable, "-m", "bench.control_fanout", "--master", json.dumps(spec)],
                                      stdout=log, stderr=subprocess.STDOUT)
        clients: list[subprocess.Popen] = []
        failed = True
        try:
            code = drive(args, master, clients, marathon_port, mesos_port)
            failed = False
            return code
        finally:
            for client in clients:
                if client.poll() is None:
                    client.kill()
                    client.wait()
            master.terminate()
            try:
                master.wait(timeout=15)
            except subprocess.TimeoutExpired:
                master.kill()
                master.wait()
            if failed:
                print("the master's log (its end):\n" + master_log.read_text()[-3000:])


def drive(args: argparse.Namespace, master: subprocess.Popen, clients: list[subprocess.Popen],
          marathon_port: int, mesos_port: int) -> int:
    marathon = httpx.Client(base_url=f"http://127.0.0.1:{marathon_port}", headers={"Authorization": f"token={SECRET}"},
                            timeout=30)
    deadline = time.monotonic() + 30
    while True:
        try:
            if marathon.get("/ping").status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or master.poll() is not None:
            raise SystemExit("the master did not come up")
        time.sleep(0.1)
    print(f"bench.control_fanout — a master with {args.agents} simulated agents long-polling /v1/view "
          f"({args.processes} client processes), {args.changes} app changes {args.interval:g} s apart", flush=True)
    started = time.monotonic()
    for k in range(args.processes):
        spec = {"mesos": mesos_port, "changes": args.changes, "indexes": list(range(k, args.agents, args.processes))}
        clients.append(subprocess.Popen([sys.executable, "-m", "bench.control_fanout", "--agents-process",
                                         json.dumps(spec)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
    for client in clients:
        assert client.stdout is not None
        if client.stdout.readline().strip() != "ready":
            raise SystemExit("a client process failed before its agents followed the view")
    view = httpx.get(f"http://127.0.0.1:{mesos_port}/v1/view", headers={"Authorization": f"token={SECRET}"}).content
    print(f"  {args.agents} agents registered and following in {time.monotonic() - started:.1f} s; "
          f"the view is {len(view) / 1024:.0f} KiB ({len(gzip.compress(view)) / 1024:.0f} KiB gzipped)", flush=True)
    settled = settle(master.pid)
    print(f"  the master settled (under {SETTLED_SHARE:.0%} of a core for a second) after {settled:.1f} s", flush=True)

    posted: list[float] = []
    cpu_before = process_cpu(master.pid)
    window_start = time.monotonic()
    for index in range(args.changes):
        name = change_name(index)
        body = {"id": f"/{name}", "cmd": "sleep 100000", "cpus": 0.01, "mem": 8, "instances": 1,
                "portDefinitions": [{"port": 0, "labels": {"VIP_0": f"/{name}:80"}}]}
        posted.append(time.monotonic())
        answer = marathon.post("/v2/apps", json=body)
        if answer.status_code not in (200, 201):
            raise SystemExit(f"POST /v2/apps {name}: HTTP {answer.status_code} {answer.text[:300]}")
        time.sleep(max(0.0, posted[-1] + args.interval - time.monotonic()))
    window = time.monotonic() - window_start
    master_cpu = process_cpu(master.pid) - cpu_before
    marathon.close()

    seen: dict[str, dict[str, float]] = {}
    for client in clients:
        out, _ = client.communicate("stop\n", timeout=60)
        seen.update(json.loads(out.strip().splitlines()[-1]))

    lasts, spreads, missing = [], [], 0
    print(f"{'change':<12}{'first':>8}{'every':>8}  (s after the POST was sent; agents holding it)")
    for index in range(args.changes):
        times = [changes[str(index)] - posted[index] for changes in seen.values() if str(index) in changes]
        missing += len(seen) - len(times)
        if not times:
            print(f"{change_name(index):<12}  no agent got it")
            continue
        lasts.append(max(times))
        spreads.append(max(times) - min(times))
        print(f"{change_name(index):<12}{min(times):>8.3f}{max(times):>8.3f}  {len(times)}/{len(seen)}")
    if not lasts:
        return 1
    p50 = statistics.median(lasts)
    p99 = statistics.quantiles(lasts, n=100, method="inclusive")[98] if len(lasts) > 1 else lasts[0]
    per_change = master_cpu / args.changes
    met = p99 < GOAL_P99_S and missing == 0
    print(f"control.fanout_1k_p99_s {p99:.3f} (p50 {p50:.3f}; fan-out spread p50 {statistics.median(spreads):.3f}) "
          f"over {len(lasts)} changes to {len(seen)} agents (goal p99 < {GOAL_P99_S:g} s) {'met' if met else 'MISSED'}"
          + (f"; {missing} deliveries missing" if missing else ""))
    print(f"  master CPU {master_cpu:.2f} s over {window:.1f} s: {per_change:.3f} s per change")
    key = "control.fanout_1k" if args.agents == 1000 else f"control.fanout_{args.agents}"
    record(f"{key}_p99_s", p99, "s", f"< {GOAL_P99_S:g}" if args.agents == 1000 else None,
           met if args.agents == 1000 else None, changes=len(lasts))
    record(f"{key}_p50_s", p50, "s", changes=len(lasts))
    record(f"{key}_spread_s", statistics.median(spreads), "s", changes=len(lasts))
    record(f"{key}_master_cpu_s", per_change, "s/change", changes=len(lasts))
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
