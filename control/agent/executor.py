"""The executor: a task is a process tree in its own cgroup, with Marathon's environment.

```
TaskLaunch ──► sandbox dir (stdout, stderr) ──► [container network: netns + attach] ──►
  cgroup <scope>/tasks/<id> (cpu, mem limits) ──► process (own session, unprivileged user)
  ──► monitor: exit → TASK_FINISHED/FAILED;  kill → TASK_KILLING, SIGTERM … SIGKILL → TASK_KILLED
```

Tasks outlive the agent process (own session, own cgroup). Each task has a record in
``<work_dir>/tasks/<task id>.json``, written before its process starts (so a task whose agent died
mid-start is found by its cgroup) and removed when it ends; a restarted agent adopts the ones
still alive and reports them. A launch or kill touches only its own task's record: no step costs
more with a thousand tasks than with one, and no step but the task itself starts a process for
host-network tasks.

Launches are idempotent by task id: a known task (starting, running, or killed before its launch
arrived) is not started again. ``launch`` blocks while the task starts (call it off the loop);
``kill`` never waits for another task's start.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pwd
import resource
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from cluster.view import TaskPort
from control.agent.cgroups import Cgroup, CgroupLayout
from control.agent.images import NGINX, ImageMap, prepare_nginx
from control.protocol import TaskLaunch, TaskStatus

log = logging.getLogger("navstar.executor")

StatusSink = Callable[[TaskStatus], None]
TOMBSTONES = 10_000          # ids of tasks killed before their launch arrived, remembered


class ContainerNetworks(Protocol):
    """Attaches a task namespace to a container network (the overlay implements it)."""

    def attach(self, task_id: str, netns: str, launch: TaskLaunch) -> tuple[list[str], list[TaskPort]]:
        """Plumbs ``netns`` for ``launch``; returns the container IPs and the ports with the host
        ports actually bound. Raises on failure (nothing kept)."""

    def detach(self, task_id: str) -> None:
        """Idempotent."""

    def adopt(self, live: dict[str, str]) -> None:
        """After an agent restart, ``live`` maps the tasks still running to their namespace: their
        attachments are checked, anything attached for other tasks is released."""


@dataclass
class RunningTask:
    launch: TaskLaunch
    pid: int
    sandbox: str
    netns: str | None = None
    ip_addresses: list[str] = field(default_factory=list)
    state: str = "TASK_RUNNING"
    healthy: bool | None = None
    started_at: float = field(default_factory=time.time)
    kill_deadline: float | None = None
    process: subprocess.Popen | None = None  # None when adopted from an earlier agent run
    pidfd: int | None = None     # readable once the process has exited (ExitWatch)

    def to_json(self) -> dict:
        return {"launch": self.launch.model_dump(), "pid": self.pid, "sandbox": self.sandbox,
                "netns": self.netns, "ip_addresses": self.ip_addresses, "state": self.state,
                "started_at": self.started_at}


# The system's directories, then the agent's own interpreter's (where `navstar` is installed), so an app's
# cmd can run `navstar marathon-lb …` as DC/OS ran its packages' binaries.
TASK_PATH = ":".join(dict.fromkeys(["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin",
                                    os.path.dirname(sys.executable)]))


class ExitWatch:
    """Which tasks' processes have exited, in one ``epoll_wait`` rather than a ``waitpid`` or a
    ``/proc`` read per task every poll (333 tasks at 5 polls a second were most of an idle
    agent's CPU). A pidfd works for adopted processes too, which are not our children. A task
    without one (no pidfd support, the process already gone, past the descriptor budget) is
    checked every poll as before."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._tasks: dict[int, str] = {}     # pidfd → task id
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        # Sockets and files need descriptors too: watch at most a quarter of the limit.
        self._budget = soft // 4 if soft != resource.RLIM_INFINITY else 4096

    def watch(self, task_id: str, task: RunningTask) -> None:
        if task.pidfd is not None or len(self._tasks) >= self._budget:
            return
        try:
            fd = os.pidfd_open(task.pid)
        except OSError:
            return
        self._epoll.register(fd, select.EPOLLIN)
        self._tasks[fd] = task_id
        task.pidfd = fd

    def unwatch(self, task: RunningTask) -> None:
        fd, task.pidfd = task.pidfd, None
        if fd is not None:
            self._tasks.pop(fd, None)
            self._epoll.unregister(fd)
            os.close(fd)

    def exited(self) -> set[str]:
        """Ids of watched tasks whose process has exited (until they are unwatched)."""
        return {self._tasks[fd] for fd, _events in self._epoll.poll(0) if fd in self._tasks}


class Executor:
    def __init__(self, work_dir: Path, agent_ip: str, on_status: StatusSink, *,
                 cgroup_scope: str = "navstar", netns_prefix: str = "navstar-task-",
                 user: str | None = "nobody", image_map: ImageMap | None = None,
                 networks: ContainerNetworks | None = None, resolv_conf: str | None = None,
                 node_netns: str | None = None) -> None:
        self.work_dir = Path(work_dir)
        self.sandboxes = self.work_dir / "sandboxes"
        self.sandboxes.mkdir(parents=True, exist_ok=True)
        self.agent_ip = agent_ip
        self.on_status = on_status
        self.cgroup_scope = cgroup_scope.strip("/")
        self.netns_prefix = netns_prefix
        self.user = user
        self.image_map = image_map or ImageMap()
        self.networks = networks
        self.resolv_conf = resolv_conf
        # Host-network tasks enter the node's named namespace with `ip netns exec`, which gives
        # them the node's /etc/netns resolv.conf (the node resolver).
        self.node_netns = node_netns
        self.tasks: dict[str, RunningTask] = {}
        self._records = self.work_dir / "tasks"
        self._records.mkdir(parents=True, exist_ok=True)
        self._legacy_state_file = self.work_dir / "tasks.json"     # one file for all (older agents)
        self._layout = CgroupLayout.detect()
        # Tasks being started (id → killed meanwhile) and ids killed before their launch arrived
        # (a late launch of one is refused): with self.tasks, what makes launches idempotent.
        self._starting: dict[str, bool] = {}
        self._tombstones: dict[str, float] = {}
        # Guards the dicts above; held for bookkeeping only, never while a task starts or stops.
        self._lock = threading.RLock()
        self._exits = ExitWatch()

    # -- task records ------------------------------------------------------------------
    def _record(self, task_id: str) -> Path:
        return self._records / f"{task_id}.json"

    def _save(self, task: RunningTask) -> None:
        path = self._record(task.launch.task_id)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(task.to_json()))
        tmp.replace(path)

    def _forget(self, task_id: str) -> None:
        self._record(task_id).unlink(missing_ok=True)

    def cgroup(self, task_id: str) -> Cgroup:
        return Cgroup(f"{self.cgroup_scope}/mesos/{task_id}", self._layout)

    def knows(self, task_id: str) -> bool:
        """The task is starting, running, or was killed before its launch arrived."""
        with self._lock:
            return task_id in self.tasks or task_id in self._starting or task_id in self._tombstones

    def adopt(self) -> list[TaskStatus]:
        """Re-attaches to tasks a previous agent run left running; returns their statuses."""
        with self._lock:
            return self._adopt()

    def _saved(self) -> dict[str, dict]:
        saved: dict[str, dict] = {}
        try:
            saved.update(json.loads(self._legacy_state_file.read_text()))
        except (FileNotFoundError, ValueError):
            pass
        for path in self._records.glob("*.json"):
            try:
                saved[path.stem] = json.loads(path.read_text())
            except (OSError, ValueError):
                path.unlink(missing_ok=True)
        return saved

    def _adopt(self) -> list[TaskStatus]:
        statuses = []
        for task_id, raw in self._saved().items():
            task = RunningTask(TaskLaunch.model_validate(raw["launch"]), raw["pid"], raw["sandbox"],
                               raw.get("netns"), raw.get("ip_addresses", []), raw.get("state", "TASK_RUNNING"),
                               started_at=raw.get("started_at", time.time()))
            if not task.pid:
                # The agent died while starting it: its process, if any, is in its cgroup.
                task.pid = next((pid for pid in self.cgroup(task_id).pids() if _alive(pid)), 0)
                task.state = "TASK_RUNNING"
            if task.pid and _alive(task.pid) and task.state in ("TASK_RUNNING", "TASK_KILLING"):
                self.tasks[task_id] = task
                self._exits.watch(task_id, task)
                self._save(task)
                log.info("adopted task %s (pid %d)", task_id, task.pid)
                statuses.append(self._status(task, task.state, "adopted after agent restart"))
            else:
                self._cleanup(task)
                self._forget(task_id)
        self._legacy_state_file.unlink(missing_ok=True)
        if self.networks is not None:
            try:
                self.networks.adopt({t: task.netns for t, task in self.tasks.items() if task.netns})
            except Exception:  # noqa: BLE001 — adoption of the rest goes on
                log.exception("adopting container network attachments")
        return statuses

    # -- launch ------------------------------------------------------------------------
    def launch(self, launch: TaskLaunch) -> None:
        """Starts the task (idempotent by task id); every outcome is reported through ``on_status``.
        Raises ValueError for a task id that names no sandbox (nothing started)."""
        sandbox = self.sandboxes / launch.task_id
        if sandbox.resolve().parent != self.sandboxes.resolve():
            raise ValueError(f"task id {launch.task_id!r} does not name a sandbox below {self.sandboxes}")
        with self._lock:
            if self.knows(launch.task_id):
                # The master may resend a launch it did not see acknowledged; one killed before
                # it arrived stays killed (its TASK_KILLED was reported then).
                return
            self._starting[launch.task_id] = False
        task: RunningTask | None = None
        try:
            task = self._start(launch, sandbox)
        finally:
            with self._lock:
                killed = self._starting.pop(launch.task_id, False)
                if task is not None:
                    self.tasks[launch.task_id] = task
                    self._exits.watch(launch.task_id, task)
        if task is None:
            return
        log.info("task %s running as pid %d", launch.task_id, task.pid)
        self.on_status(self._status(task, "TASK_RUNNING"))
        if killed:
            self.kill(launch.task_id)

    def _start(self, launch: TaskLaunch, sandbox: Path) -> RunningTask | None:
        sandbox.mkdir(parents=True, exist_ok=True)
        netns: str | None = None
        try:
            command = self._command(launch, sandbox)
            netns, ips, ports = self._network(launch)
            launch = launch.model_copy(update={"ports": ports})
            cgroup = self.cgroup(launch.task_id)
            cgroup.create()
            try:
                cgroup.set_limits(launch.cpus, launch.mem)
            except OSError as exc:
                log.warning("task %s: cannot set limits: %s", launch.task_id, exc)
            env = self._environment(launch, sandbox, ips)
            argv = self.task_argv(["/bin/sh", "-c", command] if isinstance(command, str) else command, netns)
            # The record first: an agent killed from here on finds the task by its cgroup.
            task = RunningTask(launch, 0, str(sandbox), netns, ips)
            self._save(task)
            with open(sandbox / "stdout", "ab") as out, open(sandbox / "stderr", "ab") as err:
                self._hand_over_sandbox(sandbox)
                # No preexec_fn: Python then starts the child with vfork (no copy of the agent's
                # page tables, no GIL held across a fork); the child's first step, a shell
                # builtin, moves it into its cgroup before it execs anything of the task.
                task.process = subprocess.Popen(
                    [*joining(cgroup), *argv], cwd=sandbox, env=env, stdin=subprocess.DEVNULL, stdout=out,
                    stderr=err, start_new_session=True)
        except Exception as exc:  # noqa: BLE001 — any failure becomes the task's status
            log.warning("task %s failed to start: %s", launch.task_id, exc)
            # Whatever was plumbed for it goes again (namespace, overlay address, port mappings).
            self._cleanup(RunningTask(launch, 0, str(sandbox), netns))
            self._forget(launch.task_id)
            self.on_status(TaskStatus(task_id=launch.task_id, state="TASK_FAILED", timestamp=time.time(),
                                      message=str(exc) or type(exc).__name__))
            return None
        task.pid = task.process.pid
        self._save(task)
        return task

    def _command(self, launch: TaskLaunch, sandbox: Path) -> str | list[str]:
        if launch.cmd:
            return launch.cmd
        if launch.args:
            return list(launch.args)
        if launch.image:
            entry = self.image_map.command_for(launch.image)
            if entry is None:
                raise ValueError(f"image {launch.image!r} has no local runtime and no entry in the agent's image map")
            if entry == NGINX:
                return prepare_nginx(sandbox, self._first_port(launch), launch.task_id)
            return entry
        raise ValueError("the app has neither cmd, args nor an image")

    def _first_port(self, launch: TaskLaunch) -> int:
        for port in launch.ports:
            if launch.network == "host" and port.host_port:
                return port.host_port
            if port.container_port:
                return port.container_port
            if port.host_port:
                return port.host_port
        return 80

    def _network(self, launch: TaskLaunch) -> tuple[str | None, list[str], list[TaskPort]]:
        if launch.network == "host":
            return None, [], launch.ports
        if self.networks is None:
            raise ValueError(f"{launch.network} networking needs the overlay, which this agent does not run")
        netns = f"{self.netns_prefix}{launch.task_id.replace('.', '-')[-40:]}"
        subprocess.run(["ip", "netns", "add", netns], check=True, capture_output=True)
        try:
            subprocess.run(["ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up"], check=True)
            # The task owns this namespace: let its unprivileged user bind any port (nginx on :80),
            # as container runtimes do.
            subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-qw",
                            "net.ipv4.ip_unprivileged_port_start=0"], check=True)
            if self.resolv_conf:
                etc = Path("/etc/netns") / netns
                etc.mkdir(parents=True, exist_ok=True)
                (etc / "resolv.conf").write_text(self.resolv_conf)
            ips, ports = self.networks.attach(launch.task_id, netns, launch)
            return netns, ips, ports
        except Exception:
            self._remove_netns(netns)
            raise

    def _environment(self, launch: TaskLaunch, sandbox: Path, ips: list[str]) -> dict[str, str]:
        env = {"PATH": TASK_PATH, "LANG": "C.UTF-8",
               "HOME": str(sandbox), "MESOS_SANDBOX": str(sandbox), "MESOS_TASK_ID": launch.task_id,
               "MARATHON_APP_ID": launch.app_id, "HOST": self.agent_ip}
        ports = [p.host_port if launch.network != "container" else p.container_port for p in launch.ports]
        ports = [p for p in ports if p]
        for index, port in enumerate(ports):
            env[f"PORT{index}"] = str(port)
        for port in launch.ports:
            if port.container_port and port.host_port:
                env[f"PORT_{port.container_port}"] = str(port.host_port)
        if ports:
            env["PORT"] = str(ports[0])
            env["PORTS"] = ",".join(map(str, ports))
        for key, value in launch.labels.items():
            env[f"MARATHON_APP_LABEL_{_env_name(key)}"] = value
        if ips:
            env["MESOS_CONTAINER_IP"] = ips[0]
        env.update(launch.env)
        return env

    def task_argv(self, argv: list[str], netns: str | None) -> list[str]:
        """``argv`` as the task runs it: in its namespace (or the node's), as the task user."""
        if netns or self.node_netns:
            return ["ip", "netns", "exec", netns or self.node_netns, *self._as_user(argv)]
        return self._as_user(argv)

    def run_as_task(self, task_id: str, argv: list[str]) -> tuple[list[str], Callable[[], None] | None]:
        """How to run a helper command (a COMMAND health check) the way the task runs: the argv
        and a ``preexec_fn`` that joins the task's cgroup. Unknown task: as is, no cgroup."""
        task = self.tasks.get(task_id)
        if task is None:
            return argv, None
        cgroup = self.cgroup(task_id)
        return self.task_argv(argv, task.netns), lambda: cgroup.add_pid(os.getpid())

    def _as_user(self, argv: list[str]) -> list[str]:
        if not self.user or os.geteuid() != 0:
            return argv
        return ["setpriv", f"--reuid={self.user}", f"--regid={pwd.getpwnam(self.user).pw_gid}",
                "--init-groups", "--inh-caps=-all", *argv]

    def _hand_over_sandbox(self, sandbox: Path) -> None:
        if self.user and os.geteuid() == 0:
            entry = pwd.getpwnam(self.user)
            for path in [sandbox, *sandbox.iterdir()]:
                os.chown(path, entry.pw_uid, entry.pw_gid)
                if path.is_dir() and path != sandbox:     # what an image prepared (nginx: html, tmp)
                    for below in path.rglob("*"):
                        os.chown(below, entry.pw_uid, entry.pw_gid)

    # -- kill and monitor ----------------------------------------------------------------
    def kill(self, task_id: str, grace: float | None = None) -> bool:
        """SIGTERM now, SIGKILL after the grace period. A task still starting is killed as soon as
        it runs (True). An unknown task (False) is remembered as killed: a launch of it arriving
        later is not started. Never waits for another task's start."""
        with self._lock:
            if task_id in self._starting:
                self._starting[task_id] = True
                return True
            task = self.tasks.get(task_id)
            if task is None:
                self._tombstones[task_id] = time.monotonic()
                while len(self._tombstones) > TOMBSTONES:
                    del self._tombstones[next(iter(self._tombstones))]
                return False
            if task.state == "TASK_KILLING":
                return True
            task.state = "TASK_KILLING"
            grace = task.launch.kill_grace_seconds if grace is None else grace
            task.kill_deadline = time.monotonic() + grace
        self._signal(task, signal.SIGTERM)
        self._save(task)
        self.on_status(self._status(task, "TASK_KILLING"))
        return True

    def _signal(self, task: RunningTask, sig: int) -> None:
        cgroup = self.cgroup(task.launch.task_id)
        pids = set(cgroup.pids()) | ({task.pid} if task.pid else set())
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def poll(self) -> None:
        """Reaps finished tasks and escalates kills; called periodically (off the loop)."""
        with self._lock:
            exited = self._exits.exited()
        for task_id, task in list(self.tasks.items()):
            if task.pidfd is not None and task_id not in exited and task.kill_deadline is None:
                continue            # still running: its pidfd would be readable otherwise
            code = self._exit_code(task)
            if code is None:
                if task.kill_deadline is not None and time.monotonic() > task.kill_deadline:
                    self._signal(task, signal.SIGKILL)
                continue
            if task.state == "TASK_KILLING":
                state, message = "TASK_KILLED", "killed"
            elif code == 0:
                state, message = "TASK_FINISHED", "exited with status 0"
            else:
                state, message = "TASK_FAILED", f"exited with status {code}"
            # Children that outlived the main process go with it.
            self._signal(task, signal.SIGKILL)
            with self._lock:
                self.tasks.pop(task_id, None)
                self._exits.unwatch(task)
            self._cleanup(task)
            self._forget(task_id)
            status = self._status(task, state, message)
            status.exit_code = code if code >= 0 else None
            log.info("task %s %s (%s)", task_id, state, message)
            self.on_status(status)

    def _exit_code(self, task: RunningTask) -> int | None:
        if task.process is not None:
            return task.process.poll()
        return None if _alive(task.pid) else -1

    def _cleanup(self, task: RunningTask) -> None:
        if task.netns:
            if self.networks is not None:
                try:
                    self.networks.detach(task.launch.task_id)
                except Exception as exc:  # noqa: BLE001
                    log.warning("detaching %s: %s", task.launch.task_id, exc)
            self._remove_netns(task.netns)
        cgroup = self.cgroup(task.launch.task_id)
        try:
            cgroup.remove(timeout=2.0)
        except OSError as exc:
            log.warning("cgroup of %s not removed: %s", task.launch.task_id, exc)

    def _remove_netns(self, netns: str) -> None:
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)
        etc = Path("/etc/netns") / netns
        if etc.exists():
            for child in etc.iterdir():
                child.unlink()
            etc.rmdir()

    async def run(self, interval: float = 0.2) -> None:
        while True:
            # Reaping a task tears down its namespace, addresses and cgroup: not on the loop.
            await asyncio.to_thread(self.poll)
            await asyncio.sleep(interval)

    def statuses(self) -> list[TaskStatus]:
        return [self._status(t, t.state) for t in list(self.tasks.values())]

    def set_health(self, task_id: str, healthy: bool) -> None:
        task = self.tasks.get(task_id)
        if task is not None and task.healthy != healthy:
            task.healthy = healthy
            self.on_status(self._status(task, task.state, "healthy" if healthy else "unhealthy"))

    def _status(self, task: RunningTask, state: str, message: str = "") -> TaskStatus:
        ports = [TaskPort(**{**p.model_dump()}) for p in task.launch.ports]
        return TaskStatus(task_id=task.launch.task_id, state=state, timestamp=time.time(), message=message,
                          healthy=task.healthy, ip_addresses=task.ip_addresses, ports=ports)

    def shutdown_all(self) -> None:
        """Kills every task at once (agent removal, tests)."""
        for task in list(self.tasks.values()):
            self._signal(task, signal.SIGKILL)
        deadline = time.monotonic() + 3
        while self.tasks and time.monotonic() < deadline:
            for task in list(self.tasks.values()):
                task.state = "TASK_KILLING"
            self.poll()
            time.sleep(0.05)


# Writes its own pid into each cgroup.procs named before "--", then execs the rest: one process
# (the task's), no fork, no helper binary.
_JOIN_CGROUP = 'for f; do [ "$f" = -- ] && break; echo $$ > "$f" || exit 127; shift; done; shift; exec "$@"'


def joining(cgroup: Cgroup) -> list[str]:
    """The argv prefix that makes the started process join ``cgroup`` (every tree) and exec on."""
    return ["/bin/sh", "-c", _JOIN_CGROUP, "navstar-task", *(str(p / "cgroup.procs") for p in cgroup.paths()), "--"]


def bridge_for(launch: TaskLaunch) -> str:
    """DC/OS's split of the overlay: Mesos containers on m-dcos, Docker-style ones (and BRIDGE
    networking) on d-dcos."""
    if launch.network == "container" and launch.container_type != "DOCKER":
        return "m-dcos"
    return "d-dcos"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def _env_name(key: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in key).upper()

