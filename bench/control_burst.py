"""The control plane under a burst: N one-task apps with a VIP each, posted to the lab at once.

Reports the POSTs (time, p99), the launch rate (tasks/s), the time until every task is
``TASK_RUNNING`` and every VIP is served (has its backend) on every agent, and what went wrong on
the way: tasks the master killed as unknown, failed launches and kills (the master's log), and
duplicate launches (an app with more than one task id started, from the agents' logs). Then
``lab down`` with the tasks running, timed. Peer: none in the same run — the goals are the
issue's (1,000 apps under 30 s, ``lab down`` of 1,000 tasks under 10 s).

Uses the default lab (``navstar lab up --agents 3``), built when it is not up; the lab is always
taken down at the end (that is the ``lab down`` measurement) unless ``--keep``. Only one lab may
exist on the machine: run it under ``flock /tmp/navstar-lab.lock``.

Run: flock /tmp/navstar-lab.lock .venv/bin/python -m bench.control_burst [--apps 1000]
     [--concurrency 8] [--cpus 0.005]
Exits 1 when a goal is missed, or the burst does not converge within --timeout.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from bench._results import record
from control.auth import auth_header
from navstar.lab import Lab, LabState

BURST_GOAL_S = 30.0
DOWN_GOAL_S = 10.0
# Steady state after the burst: share of one core each node's processes use while nothing changes.
STEADY_AGENT_GOAL, STEADY_MASTER_GOAL = 0.05, 0.02
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# The master's line for a task killed as nobody's (an older wording too).
UNKNOWN_KILL = re.compile(r"runs unknown task|belongs to no app or task the master knows")
# What replaces a task before it ran its course (a duplicate launch, when the first one runs on):
# its agent marked unreachable (nothing heard for --agent-timeout), or a reconciliation that did
# not find an acknowledged launch on its agent.
UNREACHABLE = re.compile(r"agent \S+ unreachable \(nothing heard")
LOST_BY_RECONCILIATION = "does not list it (reconciliation)"
LAUNCH_FAILURE = re.compile(r"launch of \S+ (failed|rejected)")
KILL_FAILURE = re.compile(r"could not kill|kill of \S+: ")
STARTED = re.compile(r"task (\S+) running as pid")


def app(index: int, cpus: float, mem: float, network: str | None = None) -> dict:
    """A host-network task with a VIP; with ``network``, a container on that CNI network (a plugin
    chain per launch), Mesos and Docker containers alternating (dcos: both halves of the /24)."""
    name = f"burst-{index:04d}"
    if network:
        kind = "MESOS" if index % 2 == 0 else "DOCKER"
        return {"id": f"/{name}", "cmd": "sleep 100000", "cpus": cpus, "mem": mem, "instances": 1,
                "container": {"type": kind, **({"docker": {"image": "busybox"}} if kind == "DOCKER" else {}),
                              "portMappings": [{"containerPort": 80, "labels": {"VIP_0": f"/{name}:80"}}]},
                "networks": [{"mode": "container", "name": network}]}
    return {"id": f"/{name}", "cmd": "sleep 100000", "cpus": cpus, "mem": mem, "instances": 1,
            "portDefinitions": [{"port": 0, "protocol": "tcp", "labels": {"VIP_0": f"/{name}:80"}}]}


def log_size(path: str | None) -> int:
    return Path(path).stat().st_size if path and Path(path).exists() else 0


def log_since(path: str | None, offset: int) -> str:
    if not path or not Path(path).exists():
        return ""
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def served_vips(state: LabState, node: str) -> int:
    """VIPs of the burst the node's dataplane serves with a backend."""
    ns = state.node(node).namespace
    out = subprocess.run(["ip", "netns", "exec", ns, "curl", "-s", "--max-time", "5",
                          "http://127.0.0.1:62080/v1/vips"], capture_output=True, text=True)
    try:
        vips = json.loads(out.stdout or "[]")
    except ValueError:
        return 0
    return sum(1 for v in vips if v.get("vip", "").startswith("burst-") and v.get("backend"))


def burst_tasks(marathon: httpx.Client, refusals: Counter) -> list[dict]:
    """``/v2/tasks``; an answer other than 200 is counted (by status) and read as no task."""
    answer = marathon.get("/v2/tasks")
    if answer.status_code != 200:
        refusals[answer.status_code] += 1
        return []
    return answer.json()["tasks"]


def _process_tree_cpu(root: int) -> float:
    """CPU seconds used so far by ``root`` and every process below it (an agent's NFQUEUE
    workers, a node's helpers; its tasks too, which sleep)."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in tree]
        tree.update(children)
        frontier += children
    return sum(times.get(pid, 0.0) for pid in tree)


def steady_cpu(state: LabState, seconds: float) -> dict[str, float]:
    """Share of one core each node used over ``seconds`` of a cluster at rest."""
    before = {n.name: _process_tree_cpu(n.pid) for n in state.nodes if n.pid}
    time.sleep(seconds)
    return {name: (_process_tree_cpu(state.node(name).pid) - used) / seconds for name, used in before.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--apps", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8, help="POSTs in flight at once")
    parser.add_argument("--cpus", type=float, default=0.005,
                        help="per task (3 lab agents of 2 cpus hold 1,200 tasks of 0.005)")
    parser.add_argument("--mem", type=float, default=8)
    parser.add_argument("--agents", type=int, default=3)
    parser.add_argument("--network", default=None,
                        help="tasks on this container network (dcos: 250 addresses per agent), through CNI")
    parser.add_argument("--timeout", type=float, default=300, help="give up on convergence after this")
    parser.add_argument("--steady", type=float, default=20.0,
                        help="then measure each node's CPU for this many seconds at rest (0: skip)")
    parser.add_argument("--keep", action="store_true", help="leave the lab up (no lab down measurement)")
    parser.add_argument("--remove", action="store_true",
                        help="then remove every app and time it until no task is left (before lab down)")
    parser.add_argument("--lab", default="lab", help="the lab's name (another than the default lab's)")
    parser.add_argument("--underlay", default="198.18.0.0/24", help="its underlay, when it is built")
    args = parser.parse_args()

    lab = Lab(args.lab, progress=lambda msg: print(f"  lab: {msg}", flush=True))
    if not lab.is_up():
        lab.up(agents=args.agents, underlay=args.underlay)
    state = lab.state()
    assert state is not None
    agents = [n.name for n in state.nodes if n is not state.master]
    offsets = {n.name: log_size(n.log) for n in state.nodes}
    headers = auth_header(state.secret())
    marathon = httpx.Client(base_url=state.master_url, headers=headers, timeout=60)
    apps = [app(i, args.cpus, args.mem, args.network) for i in range(args.apps)]
    print(f"bench.control_burst — {args.apps} apps × 1 task ({args.cpus} cpus, {args.mem:g} MB, a VIP), "
          f"{args.concurrency} POSTs at once, {len(agents)} agents"
          + (f", on container network {args.network} (CNI)" if args.network else ""), flush=True)

    latencies: list[float] = []
    refusals: Counter = Counter()      # GET /v2/tasks answers other than 200, by status

    def post(body: dict) -> tuple[int, str]:
        started = time.monotonic()
        answer = marathon.post("/v2/apps", json=body)
        latencies.append(time.monotonic() - started)
        return answer.status_code, answer.text

    t0 = time.monotonic()
    with ThreadPoolExecutor(args.concurrency) as pool:
        codes = list(pool.map(post, apps))
    posted = time.monotonic() - t0
    bad = [(code, text) for code, text in codes if code not in (200, 201)]
    p99 = statistics.quantiles(latencies, n=100)[98] if len(latencies) >= 2 else latencies[0]
    print(f"  POSTs: {posted:.1f} s (p99 {p99 * 1000:.0f} ms), {len(bad)} refused"
          + (f" {dict(Counter(code for code, _ in bad))}: {bad[0][1][:200]}" if bad else ""), flush=True)

    running_at = served_at = None
    last = ""
    while time.monotonic() - t0 < args.timeout:
        tasks = [t for t in burst_tasks(marathon, refusals) if t["appId"].startswith("/burst-")]
        running = sum(1 for t in tasks if t.get("state") == "TASK_RUNNING")
        if running_at is None and running >= args.apps:
            running_at = time.monotonic() - t0
        served = {a: served_vips(state, a) for a in agents} if running_at is not None else {}
        if running_at is not None and all(n >= args.apps for n in served.values()):
            served_at = time.monotonic() - t0
            break
        line = f"  {time.monotonic() - t0:5.0f} s: {running} running, {len(tasks)} tasks, VIPs served {served}"
        if line[10:] != last:
            print(line, flush=True)
            last = line[10:]
        time.sleep(1.0)

    per_agent: dict[str, int] = defaultdict(int)
    for t in burst_tasks(marathon, refusals):
        if t["appId"].startswith("/burst-") and t.get("state") == "TASK_RUNNING":
            per_agent[t["host"]] += 1
    master_log = log_since(state.master.log, offsets["master"])
    unknown = len(UNKNOWN_KILL.findall(master_log))
    unreachable = len(UNREACHABLE.findall(master_log))
    lost = master_log.count(LOST_BY_RECONCILIATION)
    launch_failures = len(LAUNCH_FAILURE.findall(master_log))
    kill_failures = len(KILL_FAILURE.findall(master_log))
    started: dict[str, set[str]] = defaultdict(set)
    for name in agents:
        for task_id in STARTED.findall(log_since(state.node(name).log, offsets[name])):
            started[task_id.rsplit(".", 1)[0]].add(task_id)
    duplicates = sum(len(ids) - 1 for ids in started.values() if len(ids) > 1)
    marathon.close()

    ok = served_at is not None
    rate = args.apps / running_at if running_at else 0.0
    print(f"  tasks per agent: {dict(sorted(per_agent.items()))}")
    print(f"  unknown-task kills {unknown}, launch failures {launch_failures}, failed kills {kill_failures}, "
          f"duplicate launches {duplicates}; agents marked unreachable {unreachable}, tasks lost by "
          f"reconciliation {lost}")
    for pattern in (UNKNOWN_KILL, LAUNCH_FAILURE, KILL_FAILURE, UNREACHABLE, re.compile(LOST_BY_RECONCILIATION)):
        for line in [line for line in master_log.splitlines() if pattern.search(line)][:2]:
            print(f"    e.g. {line[:220]}")
    print(f"  all TASK_RUNNING after {running_at:.1f} s; launch rate {rate:.1f} tasks/s" if running_at
          else "  all TASK_RUNNING: never")
    key = "control.burst_1k_s" if args.apps == 1000 else f"control.burst_{args.apps}_s"
    if args.network:
        key = key.replace("_s", f"_{args.network}_s")
    print(f"{key} {served_at:.1f}" if served_at is not None else f"{key} (not converged in {args.timeout:g} s)")
    goals = [f"burst < {BURST_GOAL_S:g} s: " + ("met" if served_at is not None and served_at < BURST_GOAL_S
                                                else "MISSED")]
    if served_at is not None:
        record(key, served_at, "s", f"< {BURST_GOAL_S:g}" if args.apps == 1000 else None,
               served_at < BURST_GOAL_S if args.apps == 1000 else None)
    ok = ok and served_at is not None and (served_at < BURST_GOAL_S or args.apps != 1000)
    ok = ok and unknown == 0 and duplicates == 0 and launch_failures == 0 and not bad and not refusals
    if refusals:
        print(f"  GET /v2/tasks refused: {dict(refusals)}")

    if args.steady > 0 and served_at is not None:
        shares = steady_cpu(state, args.steady)
        worst_agent = max(share for name, share in shares.items() if name != state.master.name)
        master_share = shares[state.master.name]
        print(f"  at rest ({args.steady:g} s, {args.apps} VIPs and tasks): "
              + ", ".join(f"{name} {share * 100:.1f}%" for name, share in sorted(shares.items())) + " of a core")
        print(f"control.steady_agent_cpu {worst_agent:.3f}  control.steady_master_cpu {master_share:.3f}")
        record("control.steady_agent_cpu", worst_agent, "cores", f"< {STEADY_AGENT_GOAL}", worst_agent < STEADY_AGENT_GOAL)
        record("control.steady_master_cpu", master_share, "cores", f"< {STEADY_MASTER_GOAL}",
               master_share < STEADY_MASTER_GOAL)
        goals.append(f"at rest each agent < {STEADY_AGENT_GOAL:.0%} of a core: "
                     + ("met" if worst_agent < STEADY_AGENT_GOAL else "MISSED"))
        goals.append(f"the master < {STEADY_MASTER_GOAL:.0%}: " + ("met" if master_share < STEADY_MASTER_GOAL else "MISSED"))
        ok = ok and worst_agent < STEADY_AGENT_GOAL and master_share < STEADY_MASTER_GOAL

    if args.remove and served_at is not None:
        marathon = httpx.Client(base_url=state.master_url, headers=headers, timeout=60)
        started_remove = time.monotonic()
        with ThreadPoolExecutor(args.concurrency) as pool:
            list(pool.map(lambda body: marathon.delete(f"/v2/apps{body['id']}", params={"force": "true"}), apps))
        while time.monotonic() - started_remove < args.timeout:
            if not any(t["appId"].startswith("/burst-") for t in burst_tasks(marathon, refusals)):
                break
            time.sleep(0.5)
        removed_s = time.monotonic() - started_remove
        marathon.close()
        print(f"control.remove_{'1k' if args.apps == 1000 else args.apps}_s {removed_s:.1f}  (every app removed, "
              f"no task left)")
        per_agent.clear()
    if not args.keep:
        tasks_left = sum(per_agent.values())
        started_down = time.monotonic()
        lab.down()
        down = time.monotonic() - started_down
        print(f"control.lab_down_s {down:.1f}  ({tasks_left} tasks running)")
        record("control.lab_down_s", down, "s", f"< {DOWN_GOAL_S:g}", down < DOWN_GOAL_S, tasks=tasks_left)
        goals.append(f"lab down < {DOWN_GOAL_S:g} s: " + ("met" if down < DOWN_GOAL_S else "MISSED"))
        ok = ok and (down < DOWN_GOAL_S or tasks_left < 1000)
    print("goals: " + "; ".join(goals) + ("" if unknown == duplicates == launch_failures == 0
                                          else "; no unknown kill, duplicate or launch failure: MISSED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
