"""The master's scheduler cycle: placing 5,000 tasks on 1,000 agents, then idle cycles over them.

Peer, in the same run: the bare DRF ``Allocator.allocate`` + accept/decline over the same
cluster — what the scheduler drives. The ratio says what the scheduler adds on top (planning per
app, host ports, constraints, task records, the store, launches through the fake agent seam).

The idle cycle is what runs every second once everything is placed: the scheduler plans every app
and, having no demand, keeps its frameworks suppressed (no offers); the peer's idle cycle is an
allocation whose offers are all declined (what a scheduler without suppression would pay).

Workload: 1,000 agents (8 cpus, 32 GiB, ports 31000-32000, a ``rack`` attribute of 20 values);
500 apps × 10 instances (0.5 cpus, 256 MiB, one dynamic host port); every other app has
``hostname:UNIQUE``, every fifth ``rack:GROUP_BY``.

Run: .venv/bin/python -m bench.master_scheduling
"""

from __future__ import annotations

import asyncio
import statistics
import time

from bench._results import record
from control.agent_client import FakeAgents
from control.drf import Allocator
from control.marathon_models import VersionInfo, parse_app
from control.master import Master
from control.registry import AgentRegistration

AGENTS = 1_000
APPS = 500
INSTANCES = 10
IDLE_CYCLES = 20


def registration(index: int) -> AgentRegistration:
    return AgentRegistration.model_validate({
        "agent_id": f"agent-{index:04d}", "hostname": f"agent-{index:04d}",
        "ip": f"10.{index // 250}.{index % 250}.1",
        "resources": {"cpus": 8, "mem": 32768, "disk": 100000, "ports": [{"begin": 31000, "end": 32000}]},
        "attributes": {"rack": f"r{index % 20}"}})


def app(index: int):
    constraints = []
    if index % 2 == 0:
        constraints.append(["hostname", "UNIQUE"])
    if index % 5 == 0:
        constraints.append(["rack", "GROUP_BY"])
    parsed = parse_app({"id": f"/bench/app-{index:03d}", "cmd": "sleep 3600", "cpus": 0.5, "mem": 256,
                        "instances": INSTANCES, "constraints": constraints})
    stamp = "2026-01-01T00:00:00.000Z"
    return parsed.model_copy(update={"version": stamp,
                                     "version_info": VersionInfo(last_scaling_at=stamp, last_config_change_at=stamp)})


async def scheduler_run() -> tuple[float, list[float], int]:
    fake = FakeAgents()
    master = Master(agent_client=fake, advertise_ip="10.0.0.2")
    fake.sink = master.scheduler.on_status
    for index in range(AGENTS):
        reg = registration(index)
        master.registry.register(reg)
        master.allocator.add_agent(reg.agent_id, {"cpus": 8.0, "mem": 32768.0, "disk": 100000.0})
    for index in range(APPS):
        master.scheduler.put_app(app(index), "StartApplication")
    started = time.perf_counter()
    rounds = 0
    while sum(1 for t in master.scheduler.tasks.values() if t.state == "TASK_RUNNING") < APPS * INSTANCES:
        await master.scheduler.cycle()
        for _ in range(3):
            await asyncio.sleep(0)
        rounds += 1
        if rounds > 50:
            raise RuntimeError("placement did not converge")
    placement = time.perf_counter() - started
    idle = []
    for _ in range(IDLE_CYCLES):
        begin = time.perf_counter()
        await master.scheduler.cycle()
        idle.append((time.perf_counter() - begin) * 1000)
    placed = len(master.scheduler.tasks)
    master.close()
    return placement, idle, placed


def allocator_run() -> tuple[float, list[float]]:
    """The peer: the same placements as bare offers (first-fit of 0.5 cpu / 256 MiB slices)."""
    allocator = Allocator()
    for index in range(AGENTS):
        allocator.add_agent(f"agent-{index:04d}", {"cpus": 8.0, "mem": 32768.0, "disk": 100000.0})
    allocator.add_framework("marathon", "*")
    wanted = APPS * INSTANCES
    started = time.perf_counter()
    now = 0.0
    while wanted > 0:
        for offer in allocator.allocate(now):
            fit = min(wanted, int(offer.resources.get("cpus", 0) / 0.5), int(offer.resources.get("mem", 0) / 256))
            if fit:
                allocator.accept(offer, {"cpus": 0.5 * fit, "mem": 256.0 * fit}, now, refuse_seconds=0)
                wanted -= fit
            else:
                allocator.decline(offer, now, refuse_seconds=0)
        now += 1
    placement = time.perf_counter() - started
    idle = []
    for _ in range(IDLE_CYCLES):
        begin = time.perf_counter()
        for offer in allocator.allocate(now):
            allocator.decline(offer, now, refuse_seconds=0)
        idle.append((time.perf_counter() - begin) * 1000)
        now += 1
    return placement, idle


def main() -> None:
    placement, idle, placed = asyncio.run(scheduler_run())
    peer_placement, peer_idle = allocator_run()
    print(f"{AGENTS} agents, {APPS} apps × {INSTANCES} instances ({placed} tasks placed)")
    print(f"{'run':<34}{'placement s':>12}{'idle cycle ms (median)':>25}")
    print(f"{'navstar scheduler (master)':<34}{placement:>12.2f}{statistics.median(idle):>25.1f}")
    print(f"{'peer: bare DRF allocate+accept':<34}{peer_placement:>12.2f}{statistics.median(peer_idle):>25.1f}")
    print(f"ratio scheduler/peer: placement {placement / peer_placement:.1f}x, "
          f"idle cycle {statistics.median(idle) / statistics.median(peer_idle):.1f}x")
    record("control.placement_5k_tasks_s", placement, "s")
    record("control.placement/bare_drf", placement / peer_placement, "x (slower)")
    record("control.idle_cycle_1k_s", statistics.median(idle) / 1000, "s")


if __name__ == "__main__":
    main()
