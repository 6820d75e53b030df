"""The executor: a task is a process tree in its own cgroup, with Marathon's environment.

```
TaskLaunch ──► sandbox dir (stdout, stderr) ──► [container network: netns + attach] ──►
  cgroup <scope>/tasks/<id> (cpu, mem limits) ──► process (own session, unprivileged user)
  ──► monitor: exit → TASK_FINISHED/FAILED;  kill → TASK_KILLING, SIGTERM … SIGKILL → TASK_KILLED
```

Tasks outlive the agent process (own session, own cgroup). Their pids are written to
``<work_dir>/tasks.json``; a restarted agent adopts the ones still alive and reports them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pwd
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from cluster.view import TaskPort
from control.agent.cgroups import Cgroup
from control.agent.images import NGINX, ImageMap, prepare_nginx
from control.protocol import TaskLaunch, TaskStatus

log = logging.getLogger("navstar.executor")

StatusSink = Callable[[TaskStatus], None]


class ContainerNetworks(Protocol):
    """Attaches a task namespace to a container network (the overlay implements it)."""

    def attach(self, task_id: str, netns: str, launch: TaskLaunch) -> tuple[list[str], list[TaskPort]]:
        """Plumbs ``netns`` for ``launch``; returns the container IPs and the ports with the host
        ports actually bound. Raises on failure (nothing kept)."""

    def detach(self, task_id: str) -> None:
        """Idempotent."""


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

    def to_json(self) -> dict:
        return {"launch": self.launch.model_dump(), "pid": self.pid, "sandbox": self.sandbox,
                "netns": self.netns, "ip_addresses": self.ip_addresses, "state": self.state,
                "started_at": self.started_at}


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
        self._state_file = self.work_dir / "tasks.json"
        # launch() runs on a worker thread (it shells out and plumbs networks); the rest on the loop.
        self._lock = threading.RLock()

    # -- state file --------------------------------------------------------------------
    def _save(self) -> None:
        tmp = self._state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({tid: t.to_json() for tid, t in self.tasks.items()}))
        tmp.replace(self._state_file)

    def adopt(self) -> list[TaskStatus]:
        """Re-attaches to tasks a previous agent run left running; returns their statuses."""
        with self._lock:
            return self._adopt()

    def _adopt(self) -> list[TaskStatus]:
        try:
            saved = json.loads(self._state_file.read_text())
        except (FileNotFoundError, ValueError):
            return []
        statuses = []
        for task_id, raw in saved.items():
            task = RunningTask(TaskLaunch.model_validate(raw["launch"]), raw["pid"], raw["sandbox"],
                               raw.get("netns"), raw.get("ip_addresses", []), raw.get("state", "TASK_RUNNING"),
                               started_at=raw.get("started_at", time.time()))
            if _alive(task.pid) and task.state in ("TASK_RUNNING", "TASK_KILLING"):
                self.tasks[task_id] = task
                log.info("adopted task %s (pid %d)", task_id, task.pid)
                statuses.append(self._status(task, task.state, "adopted after agent restart"))
            else:
                self._cleanup(task)
        self._save()
        return statuses

    # -- launch ------------------------------------------------------------------------
    def launch(self, launch: TaskLaunch) -> None:
        """Starts the task; every outcome is reported through ``on_status``."""
        with self._lock:
            self._launch(launch)

    def _launch(self, launch: TaskLaunch) -> None:
        if launch.task_id in self.tasks:
            return  # idempotent: the master may resend a launch it did not see acknowledged
        sandbox = self.sandboxes / launch.task_id
        if sandbox.resolve().parent != self.sandboxes.resolve():
            raise ValueError(f"task id {launch.task_id!r} does not name a sandbox below {self.sandboxes}")
        sandbox.mkdir(parents=True, exist_ok=True)
        netns: str | None = None
        try:
            command = self._command(launch, sandbox)
            netns, ips, ports = self._network(launch)
            launch = launch.model_copy(update={"ports": ports})
            cgroup = Cgroup(f"{self.cgroup_scope}/mesos/{launch.task_id}")
            cgroup.create()
            try:
                cgroup.set_limits(launch.cpus, launch.mem)
            except OSError as exc:
                log.warning("task %s: cannot set limits: %s", launch.task_id, exc)
            self._hand_over_sandbox(sandbox)
            env = self._environment(launch, sandbox, ips)
            argv = self.task_argv(["/bin/sh", "-c", command] if isinstance(command, str) else command, netns)
            with open(sandbox / "stdout", "ab") as out, open(sandbox / "stderr", "ab") as err:
                process = subprocess.Popen(argv, cwd=sandbox, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                           stderr=err, start_new_session=True,
                                           preexec_fn=lambda: cgroup.add_pid(os.getpid()))
        except Exception as exc:  # noqa: BLE001 — any failure becomes the task's status
            log.warning("task %s failed to start: %s", launch.task_id, exc)
            # Whatever was plumbed for it goes again (namespace, overlay address, port mappings).
            self._cleanup(RunningTask(launch, 0, str(sandbox), netns))
            self.on_status(TaskStatus(task_id=launch.task_id, state="TASK_FAILED", timestamp=time.time(),
                                      message=str(exc)))
            return
        task = RunningTask(launch, process.pid, str(sandbox), netns, ips, process=process)
        self.tasks[launch.task_id] = task
        self._save()
        log.info("task %s running as pid %d", launch.task_id, process.pid)
        self.on_status(self._status(task, "TASK_RUNNING"))

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
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
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
        cgroup = Cgroup(f"{self.cgroup_scope}/mesos/{task_id}")
        return self.task_argv(argv, task.netns), lambda: cgroup.add_pid(os.getpid())

    def _as_user(self, argv: list[str]) -> list[str]:
        if not self.user or os.geteuid() != 0:
            return argv
        return ["setpriv", f"--reuid={self.user}", f"--regid={pwd.getpwnam(self.user).pw_gid}",
                "--init-groups", "--inh-caps=-all", *argv]

    def _hand_over_sandbox(self, sandbox: Path) -> None:
        if self.user and os.geteuid() == 0:
            entry = pwd.getpwnam(self.user)
            for path in [sandbox, *sandbox.rglob("*")]:
                os.chown(path, entry.pw_uid, entry.pw_gid)

    # -- kill and monitor ----------------------------------------------------------------
    def kill(self, task_id: str, grace: float | None = None) -> bool:
        """SIGTERM now, SIGKILL after the grace period. False for an unknown task."""
        with self._lock:
            return self._kill(task_id, grace)

    def _kill(self, task_id: str, grace: float | None = None) -> bool:
        task = self.tasks.get(task_id)
        if task is None:
            return False
        if task.state != "TASK_KILLING":
            task.state = "TASK_KILLING"
            grace = task.launch.kill_grace_seconds if grace is None else grace
            task.kill_deadline = time.monotonic() + grace
            self._signal(task, signal.SIGTERM)
            self._save()
            self.on_status(self._status(task, "TASK_KILLING"))
        return True

    def _signal(self, task: RunningTask, sig: int) -> None:
        cgroup = Cgroup(f"{self.cgroup_scope}/mesos/{task.launch.task_id}")
        pids = set(cgroup.pids()) | {task.pid}
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def poll(self) -> None:
        """Reaps finished tasks and escalates kills; called periodically."""
        # Never wait on the loop for a launch in progress: the next poll comes soon.
        if not self._lock.acquire(blocking=False):
            return
        try:
            self._poll()
        finally:
            self._lock.release()

    def _poll(self) -> None:
        for task_id, task in list(self.tasks.items()):
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
            del self.tasks[task_id]
            self._cleanup(task)
            self._save()
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
        cgroup = Cgroup(f"{self.cgroup_scope}/mesos/{task.launch.task_id}")
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
        return [self._status(t, t.state) for t in self.tasks.values()]

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

