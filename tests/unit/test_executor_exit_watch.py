"""ExitWatch: which tasks' processes have exited, from pidfds in one epoll (control/agent/executor.py)."""

import os
import subprocess

from control.agent.executor import ExitWatch, RunningTask
from control.protocol import TaskLaunch
from tests.waiting import wait_until


def running(process: subprocess.Popen) -> RunningTask:
    launch = TaskLaunch(task_id=f"t.{process.pid}", app_id="/t", name="t", cmd="sleep")
    return RunningTask(launch, process.pid, sandbox="/nonexistent", process=process)


def test_an_exited_process_is_reported_until_unwatched_and_a_live_one_is_not():
    short = subprocess.Popen(["sleep", "0.1"])
    long = subprocess.Popen(["sleep", "30"])
    watch = ExitWatch()
    short_task, long_task = running(short), running(long)
    try:
        watch.watch("short", short_task)
        watch.watch("long", long_task)
        assert short_task.pidfd is not None and long_task.pidfd is not None
        wait_until(lambda: watch.exited() == {"short"}, timeout=10, message="the short sleep's exit seen")
        assert short.poll() == 0            # readable before it was reaped; reaping is the caller's
        assert watch.exited() == {"short"}
        fd = short_task.pidfd
        watch.unwatch(short_task)
        assert short_task.pidfd is None and watch.exited() == set()
        assert not os.path.exists(f"/proc/self/fd/{fd}") or "pidfd" not in os.readlink(f"/proc/self/fd/{fd}")
    finally:
        long.kill()
        long.wait()
    wait_until(lambda: watch.exited() == {"long"}, timeout=10, message="the killed sleep's exit seen")


def test_a_process_already_gone_is_left_to_the_per_poll_check():
    gone = subprocess.Popen(["true"])
    gone.wait()
    task = running(gone)
    ExitWatch().watch("gone", task)
    assert task.pidfd is None
