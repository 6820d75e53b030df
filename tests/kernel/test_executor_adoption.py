"""A restarted agent's executor: it adopts the tasks a previous run left (each task's own record,
even one whose agent died before the task's pid was written, found by its cgroup), forgets the
ones that are gone, and never starts a known task id twice — nor one killed before its launch came."""

import json

from control.agent.executor import Executor
from control.protocol import TaskLaunch
from tests.kernel.test_executor import work_dir  # noqa: F401 — the fixture (sandboxes nobody can reach)
from tests.waiting import wait_until


def executor(netns, where, seen: list) -> Executor:
    return Executor(where, "127.0.0.1", seen.append, cgroup_scope=netns.cgroup.relpath,
                    netns_prefix=f"{netns.name}-t", node_netns=netns.name)


def sleeper(task_id: str) -> TaskLaunch:
    return TaskLaunch(task_id=task_id, app_id="/s", name="s", cmd="sleep 60", cpus=0.01, mem=16)


def test_restarted_executor_adopts_by_record_and_cgroup_and_starts_nothing_twice(netns, work_dir):  # noqa: F811
    first_seen: list = []
    first = executor(netns, work_dir, first_seen)
    for task_id in ("a.1", "b.1", "c.1"):
        first.launch(sleeper(task_id))
    assert sorted(first.tasks) == ["a.1", "b.1", "c.1"]
    pids = {task_id: task.pid for task_id, task in first.tasks.items()}
    # Each task's first step, before it execs the command, is to join its cgroup.
    wait_until(lambda: all(pid in first.cgroup(task_id).pids() for task_id, pid in pids.items()),
               message="every task in its cgroup")
    # b.1's agent died between writing its record and its pid; c.1 ended while no agent ran.
    record = work_dir / "tasks" / "b.1.json"
    record.write_text(json.dumps({**json.loads(record.read_text()), "pid": 0}))
    first.kill("c.1", 0.0)
    wait_until(lambda: not first.cgroup("c.1").pids(), message="c.1 gone")

    seen: list = []
    second = executor(netns, work_dir, seen)
    try:
        # c.1's process is gone (our zombie, never reaped by an agent): forgotten, not adopted.
        adopted = {s.task_id: s.state for s in second.adopt()}
        assert adopted == {"a.1": "TASK_RUNNING", "b.1": "TASK_RUNNING"}
        assert second.tasks["a.1"].pid == pids["a.1"] and second.tasks["b.1"].pid == pids["b.1"]
        second.poll()
        assert sorted(second.tasks) == ["a.1", "b.1"]
        assert not (work_dir / "tasks" / "c.1.json").exists()
        # Resent launches of known tasks start nothing.
        before = {task_id: sorted(second.cgroup(task_id).pids()) for task_id in ("a.1", "b.1")}
        second.launch(sleeper("a.1"))
        second.launch(sleeper("b.1"))
        assert {task_id: sorted(second.cgroup(task_id).pids()) for task_id in ("a.1", "b.1")} == before
        # A task killed before its launch arrived is not started by the late launch.
        assert second.kill("late.1") is False
        second.launch(sleeper("late.1"))
        assert "late.1" not in second.tasks and not second.cgroup("late.1").exists()
    finally:
        second.shutdown_all()
        first.shutdown_all()
