"""The executor against real processes and cgroups, inside a test namespace."""

import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from cluster.view import TaskPort
from control.agent.cgroups import Cgroup
from control.agent.executor import Executor
from control.protocol import TaskLaunch


def wait_for(predicate, timeout=10.0, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def work_dir():
    # Tasks run as nobody, so their sandboxes must sit below world-traversable folders.
    path = Path(tempfile.mkdtemp(prefix="navstar-test-", dir="/var/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def executor(netns, work_dir):
    tmp_path = work_dir
    statuses = []
    # The executor itself runs in this test process; its tasks enter the test's namespace
    # through a per-test network prefix command (they bind on the namespace's loopback).
    ex = Executor(tmp_path, "127.0.0.1", statuses.append, cgroup_scope=netns.cgroup.relpath,
                  netns_prefix=f"{netns.name}-t")
    ex.statuses_seen = statuses
    yield ex
    ex.shutdown_all()


def launch(task_id, cmd, port, **kw):
    return TaskLaunch(task_id=task_id, app_id="/web", name="web", cmd=cmd,
                      ports=[TaskPort(host_port=port)], **kw)


def http_get(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as resp:
        return resp.read().decode()


def test_task_runs_as_nobody_with_marathon_env_limits_and_is_killed(executor, work_dir):
    tmp_path = work_dir
    port = free_port()
    executor.launch(launch("web.1", "echo $PORT0 $MARATHON_APP_ID $MESOS_TASK_ID; id -un; "
                           "exec python3 -m http.server $PORT0 --bind 127.0.0.1", port, cpus=0.25, mem=64))
    assert executor.statuses_seen[-1].state == "TASK_RUNNING"
    assert wait_for(lambda: _answers(port))
    stdout = (tmp_path / "sandboxes" / "web.1" / "stdout").read_text()
    assert f"{port} /web web.1" in stdout and "nobody" in stdout
    group = Cgroup(f"{executor.cgroup_scope}/mesos/web.1")
    assert executor.tasks["web.1"].pid in group.pids()
    if group.layout.cpu is not None and not group.layout.pure_v2:
        assert (group.layout.cpu / group.relpath / "cpu.cfs_quota_us").read_text().strip() == "25000"

    assert executor.kill("web.1", grace=1.0)
    assert executor.statuses_seen[-1].state == "TASK_KILLING"
    assert wait_for(lambda: (executor.poll(), executor.statuses_seen[-1].state)[1] == "TASK_KILLED")
    assert not _answers(port)
    assert not any(p.exists() for p in group.paths())


def test_sigterm_ignoring_task_is_killed_after_grace(executor, work_dir):
    executor.launch(launch("stubborn.1", "trap '' TERM; echo ready; sleep 60 & wait", free_port()))
    pid = executor.tasks["stubborn.1"].pid
    stdout = work_dir / "sandboxes" / "stubborn.1" / "stdout"
    assert wait_for(lambda: "ready" in stdout.read_text())
    executor.kill("stubborn.1", grace=0.5)
    started = time.monotonic()
    assert wait_for(lambda: (executor.poll(), "stubborn.1" not in executor.tasks)[1], timeout=5)
    assert time.monotonic() - started >= 0.4
    assert not os.path.exists(f"/proc/{pid}/cmdline") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"


def test_exit_status_is_reported(executor):
    executor.launch(launch("ok.1", "true", free_port()))
    executor.launch(launch("bad.1", "exit 3", free_port()))
    assert wait_for(lambda: (executor.poll(), not executor.tasks)[1])
    final = {s.task_id: s for s in executor.statuses_seen if s.state not in ("TASK_RUNNING",)}
    assert final["ok.1"].state == "TASK_FINISHED"
    assert final["bad.1"].state == "TASK_FAILED" and final["bad.1"].exit_code == 3


def test_unknown_image_fails_with_a_reason(executor):
    executor.image_map.entries.clear()
    executor.launch(TaskLaunch(task_id="img.1", app_id="/img", name="img", image="acme/thing:1"))
    assert executor.statuses_seen[-1].state == "TASK_FAILED"
    assert "acme/thing:1" in executor.statuses_seen[-1].message


def test_image_without_command_serves_nginx(executor):
    port = free_port()
    executor.launch(TaskLaunch(task_id="nginx.1", app_id="/nginx", name="nginx", image="nginx",
                               ports=[TaskPort(host_port=port)]))
    assert executor.statuses_seen[-1].state == "TASK_RUNNING", executor.statuses_seen[-1].message
    assert wait_for(lambda: _answers(port))
    assert "nginx.1" in http_get(port)


def test_restarted_agent_adopts_running_tasks(executor, work_dir):
    tmp_path = work_dir
    port = free_port()
    executor.launch(launch("web.2", "exec python3 -m http.server $PORT0 --bind 127.0.0.1", port))
    assert wait_for(lambda: _answers(port))
    reborn = Executor(tmp_path, "127.0.0.1", [].append, cgroup_scope=executor.cgroup_scope)
    adopted = reborn.adopt()
    assert [s.task_id for s in adopted] == ["web.2"] and adopted[0].state == "TASK_RUNNING"
    reborn.kill("web.2", grace=1)
    assert wait_for(lambda: (reborn.poll(), not reborn.tasks)[1])
    executor.tasks.clear()


def _answers(port: int) -> bool:
    try:
        http_get(port)
        return True
    except OSError:
        return False



class RecordingNetworks:
    """A container network that only records what the executor asks of it."""

    def __init__(self):
        self.attached, self.detached = [], []

    def attach(self, task_id, netns, launch):
        self.attached.append((task_id, netns))
        return ["9.0.0.2"], list(launch.ports)

    def detach(self, task_id):
        self.detached.append(task_id)


def test_a_launch_failing_after_the_network_is_plumbed_undoes_it(netns, work_dir):
    statuses = []
    networks = RecordingNetworks()
    ex = Executor(work_dir, "127.0.0.1", statuses.append, cgroup_scope=netns.cgroup.relpath,
                  netns_prefix=f"{netns.name}-t", user="no-such-user-here", networks=networks)
    ex.launch(TaskLaunch(task_id="c.1", app_id="/c", name="c", cmd="sleep 60", network="container",
                         network_name="dcos", container_type="MESOS"))
    assert statuses[-1].state == "TASK_FAILED" and "no-such-user-here" in statuses[-1].message
    assert networks.detached == ["c.1"]
    task_ns = networks.attached[0][1]
    assert task_ns not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not ex.tasks


def test_command_health_checks_run_as_the_task(executor):
    import asyncio

    from control.agent.health import CheckTarget, run_check
    from control.protocol import HealthCheckSpec

    executor.launch(launch("hc.1", "sleep 60", free_port()))
    spec = HealthCheckSpec(protocol="COMMAND", command='test "$(id -un)" = nobody', timeout_seconds=5)
    target = CheckTarget("127.0.0.1", None, None, {"PATH": "/usr/bin:/bin"},
                         as_task=lambda argv: executor.run_as_task("hc.1", argv))
    ok, reason = asyncio.run(run_check(spec, target))
    assert ok, reason
