"""The executor against real processes and cgroups. Host-network tasks run in the test's own
network namespace (the executor's ``node_netns``, as an agent's tasks run in its node's), so they
bind on that namespace's loopback and the test reaches them from inside it."""

import os
import shutil
import socket
import subprocess
import tempfile
import urllib.request
from pathlib import Path

import pytest

from cluster.view import TaskPort
from control.agent.cgroups import Cgroup
from control.agent.executor import Executor
from control.protocol import TaskLaunch
from tests.waiting import wait_until


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
    # The executor runs in this test process; its host-network tasks enter the test's namespace
    # (node_netns) and bind on its loopback. Container-network namespaces get a per-test prefix.
    ex = Executor(tmp_path, "127.0.0.1", statuses.append, cgroup_scope=netns.cgroup.relpath,
                  netns_prefix=f"{netns.name}-t", node_netns=netns.name)
    ex.test_netns = netns
    ex.statuses_seen = statuses
    yield ex
    ex.shutdown_all()


def launch(task_id, cmd, port, **kw):
    return TaskLaunch(task_id=task_id, app_id="/web", name="web", cmd=cmd,
                      ports=[TaskPort(host_port=port)], **kw)


def http_get(netns, port: int) -> str:
    """GET / on the test namespace's loopback; raises when nothing answers."""
    return netns.run("curl", "-sf", "-m", "5", f"http://127.0.0.1:{port}/").stdout


def in_namespace(pid: int, netns) -> bool:
    return netns.name in subprocess.run(["ip", "netns", "identify", str(pid)], capture_output=True,
                                        text=True).stdout.split()


def test_task_runs_as_nobody_with_marathon_env_limits_and_is_killed(executor, work_dir):
    tmp_path = work_dir
    port = free_port()
    executor.launch(launch("web.1", "echo $PORT0 $MARATHON_APP_ID $MESOS_TASK_ID; id -un; "
                           "exec python3 -m http.server $PORT0 --bind 127.0.0.1", port, cpus=0.25, mem=64))
    assert executor.statuses_seen[-1].state == "TASK_RUNNING"
    wait_until(lambda: _answers(executor.test_netns, port), message=f"the task's server on port {port}")
    assert in_namespace(executor.tasks["web.1"].pid, executor.test_netns)
    assert not _answers_in_root_namespace(port)
    stdout = (tmp_path / "sandboxes" / "web.1" / "stdout").read_text()
    assert f"{port} /web web.1" in stdout and "nobody" in stdout
    group = Cgroup(f"{executor.cgroup_scope}/mesos/web.1")
    assert executor.tasks["web.1"].pid in group.pids()
    if group.layout.cpu is not None and not group.layout.pure_v2:
        assert (group.layout.cpu / group.relpath / "cpu.cfs_quota_us").read_text().strip() == "25000"

    assert executor.kill("web.1", grace=1.0)
    assert executor.statuses_seen[-1].state == "TASK_KILLING"
    wait_until(lambda: (executor.poll(), executor.statuses_seen[-1].state)[1] == "TASK_KILLED",
               message="TASK_KILLED")
    assert not _answers(executor.test_netns, port)
    assert not any(p.exists() for p in group.paths())


def test_sigterm_ignoring_task_is_killed_after_grace(executor, work_dir):
    executor.launch(launch("stubborn.1", "trap '' TERM; echo ready; sleep 60 & wait", free_port()))
    pid = executor.tasks["stubborn.1"].pid
    stdout = work_dir / "sandboxes" / "stubborn.1" / "stdout"
    wait_until(lambda: "ready" in stdout.read_text(), message="the task's trap set")
    executor.kill("stubborn.1", grace=2.0)
    executor.poll()                                 # before the grace period ends: TERM was ignored
    assert "stubborn.1" in executor.tasks and in_namespace(pid, executor.test_netns)
    assert executor.statuses_seen[-1].state == "TASK_KILLING"
    wait_until(lambda: (executor.poll(), "stubborn.1" not in executor.tasks)[1], message="SIGKILL after the grace")
    assert executor.statuses_seen[-1].state == "TASK_KILLED"
    assert not os.path.exists(f"/proc/{pid}/cmdline") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"


def test_exit_status_is_reported(executor):
    executor.launch(launch("ok.1", "true", free_port()))
    executor.launch(launch("bad.1", "exit 3", free_port()))
    wait_until(lambda: (executor.poll(), not executor.tasks)[1], message="both tasks ended")
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
    wait_until(lambda: _answers(executor.test_netns, port), message="nginx answering")
    assert "nginx.1" in http_get(executor.test_netns, port)


def test_restarted_agent_adopts_running_tasks(executor, work_dir):
    tmp_path = work_dir
    port = free_port()
    executor.launch(launch("web.2", "exec python3 -m http.server $PORT0 --bind 127.0.0.1", port))
    wait_until(lambda: _answers(executor.test_netns, port), message="the task's server")
    reborn = Executor(tmp_path, "127.0.0.1", [].append, cgroup_scope=executor.cgroup_scope,
                      node_netns=executor.node_netns)
    adopted = reborn.adopt()
    assert [s.task_id for s in adopted] == ["web.2"] and adopted[0].state == "TASK_RUNNING"
    reborn.kill("web.2", grace=1)
    wait_until(lambda: (reborn.poll(), not reborn.tasks)[1], message="the adopted task killed")
    executor.tasks.clear()


def _answers(netns, port: int) -> bool:
    return netns.run("curl", "-sf", "-m", "5", "-o", "/dev/null", f"http://127.0.0.1:{port}/",
                     check=False).returncode == 0


def _answers_in_root_namespace(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2):
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
