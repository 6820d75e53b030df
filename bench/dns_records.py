"""Mesos-DNS records for 10,000 and 100,000 tasks: what an agent does with each new cluster view.

The agent turns every view into its ``mesos`` zone (``navstar/agent_main.py``
``_refresh_records``): ``state_of_view`` (the view as the Mesos state Mesos-DNS reads),
``records.generate`` (Mesos-DNS's naming rules) and ``DnsService.set_mesos_records`` (the zones
the resolver answers from). This times the three on a view of N running tasks — apps of 10
tasks, each with one named TCP port and a named VIP, spread over N/100 agents — with a split per
step, median over ``--rounds``, and checks the result: every task's ``<task>.marathon.mesos`` A
record and its SRV are there, and the resolver's zone answers a sample of them.

Goal (a view is handed out at most once a second, so records must keep up): 10,000 tasks in
under 1 s. 100,000 tasks is reported with no goal. Peer: none (Mesos-DNS itself is Go and not
installed here).

Quick (``make bench-quick``): 10,000 tasks only, one round.

Run: .venv/bin/python -m bench.dns_records [--tasks 10000 100000] [--rounds 3]
Exits 1 when the goal is missed or a record is missing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from bench._results import quick, record
from cluster.view import AgentInfo, ClusterView, FrameworkInfo, TaskInfo, TaskPort
from spartan_dns.records import generate
from spartan_dns.service import DnsService, collector_paused
from spartan_dns.view_state import state_of_view

GOAL_10K_S = 1.0
TASKS_PER_APP = 10
TASKS_PER_AGENT = 100


def view_of(tasks: int) -> ClusterView:
    """A view of ``tasks`` running tasks: apps of 10 on ``tasks / 100`` agents."""
    agent_count = max(1, tasks // TASKS_PER_AGENT)
    agents = [AgentInfo(agent_id=f"S{i}", hostname=f"agent-{i}", ip=f"10.{(i >> 8) & 255}.{i & 255}.1", port=5051)
              for i in range(agent_count)]
    infos = []
    for n in range(tasks):
        app = n // TASKS_PER_APP
        agent = agents[n % agent_count]
        infos.append(TaskInfo(task_id=f"app-{app:05d}.{n:08x}-0000-0000-0000-000000000000", app_id=f"/app-{app:05d}",
                              name=f"app-{app:05d}", agent_id=agent.agent_id, agent_ip=agent.ip, state="TASK_RUNNING",
                              ports=[TaskPort(host_port=10000 + n % 20000, name="http",
                                              labels={"VIP_0": f"/app-{app:05d}:80"})]))
    marathon = FrameworkInfo(framework_id="master-0000", hostname="198.18.0.2", ip="198.18.0.2")
    return ClusterView(version=1, master_ip="198.18.0.2", frameworks=[marathon], agents=agents, tasks=infos)


def build(view: ClusterView, dns: DnsService) -> tuple[dict[str, float], int]:
    """The agent's three steps on ``view``, each timed; the number of records generated."""
    with collector_paused():        # as the agent builds them (navstar/agent_main.py), on a worker thread
        t0 = time.perf_counter()
        state = state_of_view(view)
        t1 = time.perf_counter()
        records = generate(state, masters=[f"{view.master_ip}:{view.master_port}"], listener="198.18.0.11")
        t2 = time.perf_counter()
        built = dns.build_mesos_zones(records)
        t3 = time.perf_counter()
    dns.install_mesos_zones(built)
    missing = [t.name for t in view.tasks[:: max(1, len(view.tasks) // 50)]
               if not records.by_name(f"{t.name}.marathon.mesos.", "A")
               or not records.by_name(f"_{t.name}._tcp.marathon.mesos.", "SRV")]
    if missing:
        raise SystemExit(f"records missing for {missing[:5]}")
    return {"state_of_view": t1 - t0, "generate": t2 - t1, "zones": t3 - t2, "total": t3 - t0}, len(records)


def key(tasks: int) -> str:
    return f"dns.records_{tasks // 1000}k_s" if tasks % 1000 == 0 else f"dns.records_{tasks}_s"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[10_000] if quick() else [10_000, 100_000])
    parser.add_argument("--rounds", type=int, default=1 if quick() else 3,
                        help="rounds per size (100,000 tasks and more: one, about a minute each)")
    args = parser.parse_args()
    ok = True
    print(f"{'tasks':>8}{'records':>10}{'state_of_view':>15}{'generate':>10}{'zones':>8}{'total s':>9}  "
          f"(median of {args.rounds} rounds; one at 100,000 tasks)")
    for tasks in args.tasks:
        view = view_of(tasks)
        dns = DnsService(listen=["127.0.0.1"], port=0, upstreams=["192.0.2.53"])   # never asked
        runs = []
        count = 0
        for _ in range(args.rounds if tasks < 100_000 else 1):
            split, count = build(view, dns)
            runs.append(split)
        median = {step: statistics.median(r[step] for r in runs) for step in runs[0]}
        name = key(tasks)
        goal = f"< {GOAL_10K_S:g}" if tasks == 10_000 else None
        met = median["total"] < GOAL_10K_S if tasks == 10_000 else None
        ok = ok and met is not False
        print(f"{tasks:>8,}{count:>10,}{median['state_of_view']:>15.3f}{median['generate']:>10.3f}"
              f"{median['zones']:>8.3f}{median['total']:>9.3f}"
              + (f"  (goal < {GOAL_10K_S:g} s: {'met' if met else 'MISSED'})" if met is not None else ""), flush=True)
        record(name, median["total"], "s", goal, met, tasks=tasks, records=count,
               spread=[min(r["total"] for r in runs), max(r["total"] for r in runs)])
        for step in ("state_of_view", "generate", "zones"):
            record(f"dns.records.{step}_s", median[step], "s", tasks=tasks)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
