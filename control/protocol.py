"""Wire messages between the master and the agents (besides registration in ``registry.py``).

Master → agent (agent API, default ``<agent-ip>:5051``, ``Authorization: token=<secret>``):
  ``GET  /v1/ping``                      → ``{"agent_id": ...}``  (the master's liveness ping)
  ``POST /v1/tasks``  body ``{"launches": [TaskLaunch]}`` → 202 ``{"results": {task_id:
        "accepted" | "known" | "busy"}, "rejected": {task_id: reason}, "queued": n}`` — answered
        at once, before any task starts; idempotent by task id (``known``: queued, started, or
        killed before its launch came); ``busy``: send it again later. A single ``TaskLaunch``
        body is answered 202, or 503 when busy.
  ``DELETE /v1/tasks/{task_id}?grace=<s>`` → 202 (TASK_KILLING now, TASK_KILLED when gone); 404
        for an unknown id, which is then remembered as killed (a late launch of it never starts)
  ``GET  /v1/tasks``                     → ``[TaskStatus]`` (for reconciliation; queued launches
        as TASK_STAGING)

Agent → master (Mesos port):
  ``POST /v1/agents/{agent_id}/statuses`` body ``[TaskStatus]`` → 200 ``{"results": [...]}`` (in
        order; the agent resends a batch until it is acknowledged)
  ``POST /v1/agents/{agent_id}/status`` body ``TaskStatus`` → 200 (one at a time)
  On (re-)registration the agent also sends ``GET /v1/tasks``-shaped statuses so the master
  reconciles what survived.

Fields are only ever added.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from cluster.view import TaskPort, TaskState


class HealthCheckSpec(BaseModel):
    protocol: Literal["HTTP", "HTTPS", "TCP", "COMMAND", "MESOS_HTTP", "MESOS_TCP", "MESOS_HTTPS"] = "HTTP"
    path: str = "/"
    port_index: int | None = 0
    port: int | None = None
    command: str | None = None
    grace_period_seconds: float = 300
    interval_seconds: float = 60
    timeout_seconds: float = 20
    max_consecutive_failures: int = 3
    delay_seconds: float = 15


# Task ids name sandboxes, cgroups and namespaces: no path separators, no leading dot.
TASK_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$"


class TaskLaunch(BaseModel):
    task_id: str = Field(pattern=TASK_ID_PATTERN)
    app_id: str
    name: str                                  # Mesos task name, e.g. "web.shop"
    cmd: str | None = None                     # run with /bin/sh -c
    args: list[str] | None = None              # or exec'd directly
    env: dict[str, str] = Field(default_factory=dict)
    cpus: float = 1.0
    mem: float = 128.0
    disk: float = 0.0
    network: Literal["host", "container", "bridge"] = "host"
    network_name: str | None = None            # "dcos" for container networks
    container_type: Literal["MESOS", "DOCKER", "NONE"] = "NONE"
    image: str | None = None                   # docker image, run through the agent's image map
    ports: list[TaskPort] = Field(default_factory=list)   # host ports already chosen by the master
    health_checks: list[HealthCheckSpec] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)
    kill_grace_seconds: float = 3.0
    user: str | None = None                    # default: the agent's unprivileged user


class TaskStatus(BaseModel):
    task_id: str
    state: TaskState
    timestamp: float
    message: str = ""
    healthy: bool | None = None
    ip_addresses: list[str] = Field(default_factory=list)  # container IPs (network_infos)
    ports: list[TaskPort] = Field(default_factory=list)    # with the host ports actually bound
    exit_code: int | None = None
    extra: dict[str, Any] = Field(default_factory=dict)
