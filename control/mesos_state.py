"""Mesos ``/master/state``: the document Mesos-DNS (and dcos-net) read to build records.

Shape follows the Mesos master (see ``/work/shared/conformance/mesos-dns/fake.json``): ``leader``
``master@ip:port``, ``slaves[]`` with ``pid``/``hostname``/``resources`` (ports as Mesos' range
string), and one ``marathon`` framework whose ``tasks[]`` carry ``statuses[]`` (with
``container_status.network_infos`` for container IPs and ``labels``) and ``discovery`` (named
ports with their labels: this is where ``VIP_0`` travels).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from control.marathon_models import marathon_task_name
from control.mesos_v1 import ranges_of
from control.roles import UNRESERVED

if TYPE_CHECKING:
    from control.frameworks import FrameworkTask
    from control.master import Master
    from control.task_record import TaskRecord

MESOS_VERSION = "1.11.0"


def port_ranges(ports: list[int]) -> str:
    """``[31000, 31001, 31005]`` → ``"[31000-31001, 31005-31005]"`` (Mesos' text form)."""
    return "[" + ", ".join(f"{b}-{e}" for b, e in ranges_of(ports)) + "]"


def _labels(labels: dict[str, str]) -> dict[str, list[dict[str, str]]]:
    return {"labels": [{"key": k, "value": v} for k, v in labels.items()]}


def task_json(task: TaskRecord, framework_id: str) -> dict[str, Any]:
    name = marathon_task_name(task.app_id)
    resources: dict[str, Any] = dict(task.resources)
    for scalar in ("cpus", "mem", "disk"):
        resources.setdefault(scalar, 0)
    if task.host_ports:
        resources["ports"] = port_ranges(task.host_ports)
    statuses = []
    for entry in task.statuses:
        status: dict[str, Any] = {"state": entry["state"], "timestamp": entry["timestamp"]}
        ips = entry.get("ip_addresses") or (task.ip_addresses if entry["state"] == "TASK_RUNNING" else [])
        if ips:
            status["container_status"] = {
                "network_infos": [{"ip_addresses": [{"protocol": "IPv4", "ip_address": ip} for ip in ips],
                                   "name": "dcos" if task.network == "container" else task.network}]}
        if "healthy" in entry:
            status["healthy"] = entry["healthy"]
        status["labels"] = []
        statuses.append(status)
    discovery_ports = []
    for index, port in enumerate(task.ports):
        number = port.container_port if task.network == "container" and port.container_port else port.host_port
        if number is None:
            continue
        for protocol in port.protocols:     # as Marathon does: a udp,tcp port is two discovery ports
            entry = {"number": number, "protocol": protocol, "name": port.name or f"port{index}"}
            if port.labels:
                entry["labels"] = _labels(port.labels)
            discovery_ports.append(entry)
    return {
        "id": task.task_id,
        "name": name,
        "framework_id": framework_id,
        "executor_id": "",
        "slave_id": task.agent_id,
        "state": task.state,
        "resources": resources,
        "role": task.role,
        "statuses": statuses,
        "labels": [{"key": k, "value": v} for k, v in task.labels.items()],
        "discovery": {"visibility": "FRAMEWORK", "name": name, "ports": {"ports": discovery_ports}},
    }


def mesos_state(master: Master) -> dict[str, Any]:
    ip, port = master.advertise_ip, master.mesos_port
    scheduler = master.scheduler
    framework_id = master.marathon_framework_id
    slaves = []
    for record in master.registry.all():
        reg = record.registration
        resources: dict[str, Any] = {"cpus": reg.resources.cpus, "mem": reg.resources.mem,
                                     "disk": reg.resources.disk, "gpus": reg.resources.gpus}
        if reg.resources.ports:
            resources["ports"] = "[" + ", ".join(f"{r.begin}-{r.end}" for r in reg.resources.ports) + "]"
        # All of an agent's resources carry its role (Mesos --default_role): reserved or not.
        reserved = {} if reg.role == UNRESERVED else {reg.role: resources}
        slaves.append({
            "id": reg.agent_id, "pid": f"slave(1)@{reg.ip}:{reg.port}", "hostname": reg.hostname,
            "registered_time": record.registered_at, "resources": resources,
            "reserved_resources": reserved, "unreserved_resources": {} if reserved else resources,
            "attributes": dict(reg.attributes), "active": record.reachable,
        })
    live = [task_json(t, framework_id) for t in sorted(scheduler.tasks.values(), key=lambda t: t.task_id)]
    completed = [task_json(t, framework_id) for t in scheduler.completed[-100:]]
    counts = {state: 0 for state in ("staged", "started", "finished", "killed", "failed", "lost")}
    for task in scheduler.tasks.values():
        if task.state == "TASK_STAGING":
            counts["staged"] += 1
        elif task.state == "TASK_RUNNING":
            counts["started"] += 1
    for task in scheduler.completed:
        key = {"TASK_FINISHED": "finished", "TASK_KILLED": "killed", "TASK_FAILED": "failed",
               "TASK_LOST": "lost"}.get(task.state)
        if key:
            counts[key] += 1
    roles = sorted({t.role for t in scheduler.tasks.values()} | {a.effective_role for a in scheduler.apps.values()}
                   | {"*"})
    used: dict[str, float] = {}
    for task in scheduler.tasks.values():
        for name, value in task.resources.items():
            used[name] = used.get(name, 0.0) + value
    framework = {
        "id": framework_id, "name": "marathon", "pid": f"scheduler-{master.master_id}@{ip}:{master.marathon_port}",
        "hostname": ip, "webui_url": f"http://{ip}:{master.marathon_port}", "active": True, "user": "root",
        "role": "*", "roles": roles, "checkpoint": True, "failover_timeout": 604800,
        "registered_time": master.started_at, "resources": used, "used_resources": used,
        "offers": [], "tasks": live, "completed_tasks": completed,
    }
    return {
        "version": MESOS_VERSION, "id": master.master_id, "pid": f"master@{ip}:{port}", "hostname": ip,
        "leader": f"master@{ip}:{port}", "leader_info": {"id": master.master_id, "ip": ip, "port": port,
                                                         "hostname": ip},
        "start_time": master.started_at, "elected_time": master.started_at,
        "activated_slaves": sum(1 for s in slaves if s["active"]),
        "deactivated_slaves": sum(1 for s in slaves if not s["active"]),
        "staged_tasks": counts["staged"], "started_tasks": counts["started"],
        "finished_tasks": counts["finished"], "killed_tasks": counts["killed"],
        "failed_tasks": counts["failed"], "lost_tasks": counts["lost"],
        "flags": {"port": str(port), "allocation_interval": "1secs", "framework_sorter": "drf",
                  "authenticate_agents": str(master.secret is not None).lower()},
        "slaves": slaves, "frameworks": [framework, *frameworks_json(master)],
        "completed_frameworks": list(master.frameworks.completed_frameworks), "unregistered_frameworks": [],
    }


def frameworks_json(master: Master) -> list[dict[str, Any]]:
    """The v1 scheduler API's frameworks (``control.frameworks``) with their tasks, in Mesos' shape."""
    out = []
    for framework in master.frameworks.frameworks.values():
        document = framework.as_json()
        document["tasks"] = [_framework_task(t) for t in sorted(framework.tasks.values(), key=lambda t: t.task_id)]
        document["completed_tasks"] = [_framework_task(t) for t in master.frameworks.completed_tasks[-100:]
                                       if t.framework_id == framework.framework_id]
        out.append(document)
    return out


def _framework_task(task: FrameworkTask) -> dict[str, Any]:
    document = task_json(task, task.framework_id)
    document["name"] = task.name
    document["discovery"]["name"] = task.name
    return document


def state_summary(state: dict[str, Any], cluster: str = "navstar") -> dict[str, Any]:
    """Mesos ``/master/state-summary`` from a ``mesos_state`` document: per agent and per
    framework, task counts by state and used resources (what ``dcos node`` and ``dcos service`` read)."""
    task_states = ("TASK_STAGING", "TASK_STARTING", "TASK_RUNNING", "TASK_KILLING", "TASK_FINISHED",
                   "TASK_KILLED", "TASK_FAILED", "TASK_LOST", "TASK_ERROR", "TASK_UNREACHABLE")
    per_agent: dict[str, dict[str, Any]] = {}
    frameworks = []
    for framework in state["frameworks"]:
        counts = dict.fromkeys(task_states, 0)
        agent_ids: set[str] = set()
        for task in [*framework["tasks"], *framework["completed_tasks"]]:
            counts[task["state"]] = counts.get(task["state"], 0) + 1
            agent_ids.add(task["slave_id"])
            slot = per_agent.setdefault(task["slave_id"], {"counts": dict.fromkeys(task_states, 0), "used": {},
                                                           "frameworks": set()})
            slot["counts"][task["state"]] = slot["counts"].get(task["state"], 0) + 1
            slot["frameworks"].add(framework["id"])
            if task in framework["tasks"]:
                for name, value in task["resources"].items():
                    if isinstance(value, int | float):
                        slot["used"][name] = slot["used"].get(name, 0) + value
        frameworks.append({key: framework[key] for key in ("id", "name", "pid", "hostname", "webui_url", "active",
                                                          "role", "used_resources")}
                          | {"offered_resources": {}, "capabilities": [], "slave_ids": sorted(agent_ids), **counts})
    slaves = []
    for slave in state["slaves"]:
        slot = per_agent.get(slave["id"], {"counts": dict.fromkeys(task_states, 0), "used": {}, "frameworks": set()})
        used = {"cpus": 0, "mem": 0, "disk": 0, "gpus": 0} | slot["used"]
        slaves.append({**slave, "used_resources": used, "offered_resources": {}, "reserved_resources": {},
                       "unreserved_resources": slave["resources"], "version": state["version"],
                       "framework_ids": sorted(slot["frameworks"]), **slot["counts"]})
    return {"hostname": state["hostname"], "cluster": cluster, "slaves": slaves, "frameworks": frameworks}
