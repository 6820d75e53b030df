"""A task as the master keeps it: where it runs, its state and health, its ports and statuses.

Written to the state store (kind ``tasks``) on every change; the cluster view, Mesos
``/master/state`` and the Marathon API render it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from cluster.tasks import TERMINAL_STATES
from cluster.view import TaskPort


class TaskRecord(BaseModel):
    task_id: str
    app_id: str
    config_version: str                 # the app's lastConfigChangeAt when launched
    version: str                        # the app's version when launched
    agent_id: str
    agent_ip: str
    hostname: str
    framework_id: str
    role: str = "*"
    state: str = "TASK_STAGING"
    healthy: bool | None = None
    has_health_checks: bool = False
    staged_at: float
    started_at: float | None = None
    launched_at: float | None = None    # when the agent acknowledged the launch
    launch_sent_at: float | None = None  # the last time the launch was sent (same task id each time)
    launch_attempts: int = 0
    launch_next_at: float = 0.0         # an unacknowledged launch is sent again from then on
    resources: dict[str, float] = Field(default_factory=dict)
    network: Literal["host", "container", "bridge"] = "host"
    ports: list[TaskPort] = Field(default_factory=list)
    service_ports: list[int] = Field(default_factory=list)
    ip_addresses: list[str] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)
    statuses: list[dict[str, Any]] = Field(default_factory=list)
    message: str = ""
    kill_requested: bool = False
    kill_sent_at: float | None = None
    unreachable_since: float | None = None
    released: bool = False              # resources already returned to the allocator
    # Marathon's healthCheckResults: agents report health when it changes (and on reconciliation).
    health_first_success: float | None = None
    health_last_success: float | None = None
    health_last_failure: float | None = None
    health_consecutive_failures: int = 0

    def observe_health(self, healthy: bool, at: float) -> None:
        """A health report: a success (again) or a failure; a failure repeated unchanged is not
        counted twice (the agent's report, resent, is the same failure)."""
        if healthy:
            self.health_first_success = self.health_first_success or at
            self.health_last_success = at
            self.health_consecutive_failures = 0
        elif self.healthy is not False:
            self.health_last_failure = at
            self.health_consecutive_failures += 1
        self.healthy = healthy

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def ready(self) -> bool:
        return self.state == "TASK_RUNNING" and (not self.has_health_checks or self.healthy is True)

    @property
    def host_ports(self) -> list[int]:
        return [p.host_port for p in self.ports if p.host_port]
