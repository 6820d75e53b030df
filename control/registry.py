"""The master's agent registry: who is registered, with what, and who has gone quiet."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, Field, field_validator, model_validator

from control.roles import UNRESERVED, role_problem


class PortRange(BaseModel):
    begin: int = Field(ge=1, le=65535)
    end: int = Field(ge=1, le=65535)

    @model_validator(mode="after")
    def _begin_not_after_end(self) -> PortRange:
        if self.begin > self.end:
            raise ValueError(f"port range {self.begin}-{self.end}: begin must not be greater than end")
        return self


class AgentResources(BaseModel):
    cpus: float = Field(ge=0)
    mem: float = Field(ge=0)
    disk: float = Field(default=0, ge=0)
    gpus: float = Field(default=0, ge=0)
    ports: list[PortRange] = Field(default_factory=list)


class AgentRegistration(BaseModel):
    """What an agent sends when it registers; anything else is rejected with 422."""

    model_config = {"extra": "forbid"}

    agent_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._-]+$")
    hostname: str = Field(min_length=1, max_length=253)
    ip: str
    port: int = Field(default=5051, ge=1, le=65535)
    resources: AgentResources
    attributes: dict[str, str | float] = Field(default_factory=dict)
    # The container networks the agent can attach tasks to (its CNI configurations); None: an
    # agent that does not say (tasks on any network may go there, as before CNI).
    networks: list[str] | None = None
    # Mesos' --default_role: "*" offers the resources to every role; another role reserves them
    # all for it (DC/OS's public agents: "slave_public").
    role: str = Field(default=UNRESERVED, min_length=1, max_length=128)

    @field_validator("role")
    @classmethod
    def _mesos_role(cls, value: str) -> str:
        problem = role_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("ip")
    @classmethod
    def _ipv4(cls, value: str) -> str:
        import ipaddress

        ipaddress.IPv4Address(value)
        return value


class AgentRecord(BaseModel):
    registration: AgentRegistration
    registered_at: float
    last_seen: float
    reachable: bool = True


class AgentRegistry:
    """Idempotent registration: an agent that registers again keeps its record and id."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._agents: dict[str, AgentRecord] = {}

    def register(self, registration: AgentRegistration) -> AgentRecord:
        now = self._clock()
        previous = self._agents.get(registration.agent_id)
        record = AgentRecord(
            registration=registration,
            registered_at=previous.registered_at if previous else now,
            last_seen=now,
        )
        self._agents[registration.agent_id] = record
        return record

    def heartbeat(self, agent_id: str) -> bool:
        record = self._agents.get(agent_id)
        if record is None:
            return False
        record.last_seen = self._clock()
        record.reachable = True
        return True

    def mark_stale(self, timeout_seconds: float) -> list[str]:
        """Marks agents unheard-of for ``timeout_seconds`` unreachable; returns those newly marked."""
        now = self._clock()
        newly: list[str] = []
        for agent_id, record in self._agents.items():
            if record.reachable and now - record.last_seen > timeout_seconds:
                record.reachable = False
                newly.append(agent_id)
        return newly

    def remove(self, agent_id: str) -> AgentRecord | None:
        return self._agents.pop(agent_id, None)

    def get(self, agent_id: str) -> AgentRecord | None:
        return self._agents.get(agent_id)

    def all(self) -> list[AgentRecord]:
        return sorted(self._agents.values(), key=lambda r: r.registration.agent_id)

    def as_json(self) -> list[dict[str, Any]]:
        return [
            {**r.registration.model_dump(), "reachable": r.reachable, "last_seen": r.last_seen}
            for r in self.all()
        ]
