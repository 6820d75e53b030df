"""The master's seam towards agents: launch, kill, ping and list tasks (``control/protocol.py``).

``HttpAgentClient`` talks to the real agent API (``<agent-ip>:5051``); ``FakeAgents`` plays a set
of agents in memory for tests and benchmarks: launches become ``TASK_RUNNING`` at once (or stay
``TASK_STAGING`` when told), kills become ``TASK_KILLING`` then ``TASK_KILLED``, and statuses are
pushed to the master through the same entry point the real agents' POSTs reach. Faults on demand:
an agent ``up=False`` is out of reach; ``lose_answers`` launches but loses the answer;
``capacity`` answers ``busy`` beyond that many tasks; ``hold_statuses`` keeps statuses back
until ``release_statuses`` (late reports).

``launch_batch`` is the launch protocol: one request per agent carries many launches, answered
per task at once (``accepted``, ``known`` — idempotent by task id —, ``busy``, or rejected with a
reason); tasks start afterwards and report their statuses.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import httpx

from cluster.tasks import TERMINAL_STATES
from control.auth import auth_header
from control.protocol import TaskLaunch, TaskStatus


class AgentUnavailable(Exception):
    """The agent could not be reached (connection refused, timeout)."""


class LaunchRejected(Exception):
    """The agent answered but refused the launch (e.g. 422: unknown image); the message says why."""


@dataclass
class LaunchAnswer:
    """An agent's answer to a batch of launches: task ids it took (``accepted``, including ones it
    already knew), ids to send again later (``busy``: back-pressure), and ids it refused, with why."""

    accepted: set[str] = field(default_factory=set)
    busy: set[str] = field(default_factory=set)
    rejected: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class AgentAddress:
    agent_id: str
    ip: str
    port: int = 5051


class AgentClient(Protocol):
    async def launch(self, agent: AgentAddress, launch: TaskLaunch) -> None:
        """Raises AgentUnavailable or LaunchRejected."""

    async def launch_batch(self, agent: AgentAddress, launches: list[TaskLaunch]) -> LaunchAnswer:
        """Sends many launches in one request; raises AgentUnavailable (no answer: any of them
        may or may not have arrived)."""

    async def kill(self, agent: AgentAddress, task_id: str, grace: float) -> bool:
        """True when the agent is killing the task; False when it does not know it. Raises AgentUnavailable."""

    async def ping(self, agent: AgentAddress) -> bool:
        """True when the agent answered as itself."""

    async def tasks(self, agent: AgentAddress) -> list[TaskStatus]:
        """What the agent runs (reconciliation). Raises AgentUnavailable."""


class HttpAgentClient:
    def __init__(self, secret: str | None, timeout: float = 5.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._client = httpx.AsyncClient(headers=auth_header(secret), timeout=timeout, transport=transport)

    @staticmethod
    def _url(agent: AgentAddress, path: str) -> str:
        return f"http://{agent.ip}:{agent.port}{path}"

    async def launch(self, agent: AgentAddress, launch: TaskLaunch) -> None:
        try:
            resp = await self._client.post(self._url(agent, "/v1/tasks"), json=launch.model_dump())
        except httpx.HTTPError as exc:
            raise AgentUnavailable(f"agent {agent.agent_id} ({agent.ip}): {_describe(exc)}") from exc
        if resp.status_code >= 500:
            raise AgentUnavailable(f"agent {agent.agent_id}: HTTP {resp.status_code} {resp.text[:200]}")
        if resp.status_code >= 400:
            raise LaunchRejected(f"agent {agent.agent_id} refused the launch: HTTP {resp.status_code} {resp.text[:300]}")

    async def launch_batch(self, agent: AgentAddress, launches: list[TaskLaunch]) -> LaunchAnswer:
        body = {"launches": [launch.model_dump() for launch in launches]}
        try:
            resp = await self._client.post(self._url(agent, "/v1/tasks"), json=body)
        except httpx.HTTPError as exc:
            raise AgentUnavailable(f"agent {agent.agent_id} ({agent.ip}): {_describe(exc)}") from exc
        if resp.status_code >= 300:
            raise AgentUnavailable(f"agent {agent.agent_id}: HTTP {resp.status_code} {resp.text[:200]}")
        try:
            raw = resp.json()
            results: dict[str, str] = raw["results"]
            answer = LaunchAnswer(rejected={str(k): str(v) for k, v in raw.get("rejected", {}).items()})
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise AgentUnavailable(f"agent {agent.agent_id}: unreadable launch answer: {resp.text[:200]}") from exc
        for task_id, outcome in results.items():
            (answer.busy if outcome == "busy" else answer.accepted).add(task_id)
        return answer

    async def kill(self, agent: AgentAddress, task_id: str, grace: float) -> bool:
        try:
            resp = await self._client.delete(self._url(agent, f"/v1/tasks/{task_id}"), params={"grace": grace})
        except httpx.HTTPError as exc:
            raise AgentUnavailable(f"agent {agent.agent_id} ({agent.ip}): {_describe(exc)}") from exc
        if resp.status_code >= 500:
            raise AgentUnavailable(f"agent {agent.agent_id}: HTTP {resp.status_code}")
        return resp.status_code < 300

    async def ping(self, agent: AgentAddress) -> bool:
        try:
            resp = await self._client.get(self._url(agent, "/v1/ping"), timeout=2.0)
            return resp.status_code == 200 and resp.json().get("agent_id") == agent.agent_id
        except (httpx.HTTPError, ValueError, AttributeError):
            return False

    async def tasks(self, agent: AgentAddress) -> list[TaskStatus]:
        try:
            resp = await self._client.get(self._url(agent, "/v1/tasks"))
            resp.raise_for_status()
            return [TaskStatus.model_validate(s) for s in resp.json()]
        except (httpx.HTTPError, ValueError) as exc:
            raise AgentUnavailable(f"agent {agent.agent_id}: {_describe(exc)}") from exc

    async def close(self) -> None:
        await self._client.aclose()


def _describe(exc: Exception) -> str:
    """httpx's timeouts have no message: name the exception so no reason is ever empty."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


StatusSink = Callable[[str, TaskStatus], Awaitable[object]]


@dataclass
class FakeAgent:
    agent_id: str
    up: bool = True
    tasks: dict[str, TaskStatus] = field(default_factory=dict)
    launches: list[TaskLaunch] = field(default_factory=list)
    launched: set[str] = field(default_factory=set)       # task ids of ``launches``
    reject_images: set[str] = field(default_factory=set)


class FakeAgents:
    """In-memory agents. ``sink`` is the master's status entry point (set by the test)."""

    def __init__(self, auto_run: bool = True, healthy: bool | None = None) -> None:
        self.agents: dict[str, FakeAgent] = {}
        self.auto_run = auto_run
        self.healthy = healthy
        self.sink: StatusSink | None = None
        self.kills: list[str] = []
        self.lose_answers = False            # launches take effect, their answer is lost
        self.capacity: int | None = None     # tasks an agent holds before it answers busy
        self.hold_statuses = False           # statuses wait in ``held`` (late reports)
        self.held: list[tuple[str, TaskStatus]] = []
        self.batches: list[tuple[str, list[str]]] = []    # (agent, task ids) per launch request

    def agent(self, agent_id: str) -> FakeAgent:
        return self.agents.setdefault(agent_id, FakeAgent(agent_id))

    def _get(self, address: AgentAddress) -> FakeAgent:
        agent = self.agent(address.agent_id)
        if not agent.up:
            raise AgentUnavailable(f"agent {address.agent_id} is down")
        return agent

    async def report(self, agent_id: str, task_id: str, state: str, **extra) -> None:
        """Changes a task's state on the fake agent and tells the master, as an agent would."""
        agent = self.agent(agent_id)
        previous = agent.tasks.get(task_id)
        base = previous.model_dump() if previous else {"task_id": task_id}
        status = TaskStatus.model_validate({**base, **extra, "state": state, "timestamp": time.time()})
        if state in TERMINAL_STATES:
            agent.tasks.pop(task_id, None)
        else:
            agent.tasks[task_id] = status
        if self.hold_statuses:
            self.held.append((agent_id, status))
        elif self.sink is not None and agent.up:
            await self.sink(agent_id, status)

    async def release_statuses(self) -> None:
        """Delivers the statuses held back, in order (``hold_statuses`` is switched off)."""
        self.hold_statuses = False
        held, self.held = self.held, []
        for agent_id, status in held:
            if self.sink is not None and self.agent(agent_id).up:
                await self.sink(agent_id, status)

    async def launch(self, agent: AgentAddress, launch: TaskLaunch) -> None:
        answer = await self.launch_batch(agent, [launch])
        if launch.task_id in answer.rejected:
            raise LaunchRejected(answer.rejected[launch.task_id])
        if launch.task_id in answer.busy:
            raise AgentUnavailable(f"agent {agent.agent_id} is busy")

    async def launch_batch(self, agent: AgentAddress, launches: list[TaskLaunch]) -> LaunchAnswer:
        fake = self._get(agent)
        self.batches.append((agent.agent_id, [launch.task_id for launch in launches]))
        answer = LaunchAnswer()
        for launch in launches:
            if launch.task_id in fake.launched:
                answer.accepted.add(launch.task_id)      # idempotent: known
            elif launch.image in fake.reject_images:
                answer.rejected[launch.task_id] = f"unknown image {launch.image}"
            elif self.capacity is not None and len(fake.tasks) >= self.capacity:
                answer.busy.add(launch.task_id)
            else:
                self._start(agent, fake, launch)
                answer.accepted.add(launch.task_id)
        if self.lose_answers:
            raise AgentUnavailable(f"agent {agent.agent_id}: ReadTimeout (the answer was lost)")
        return answer

    def _start(self, agent: AgentAddress, fake: FakeAgent, launch: TaskLaunch) -> None:
        fake.launches.append(launch)
        fake.launched.add(launch.task_id)
        fake.tasks[launch.task_id] = TaskStatus(task_id=launch.task_id, state="TASK_STAGING",
                                                timestamp=time.time(), ports=launch.ports)
        if self.auto_run:
            healthy = self.healthy if launch.health_checks else None
            asyncio.get_running_loop().call_soon(
                lambda: asyncio.ensure_future(self.report(agent.agent_id, launch.task_id, "TASK_RUNNING",
                                                          healthy=healthy)))

    async def kill(self, agent: AgentAddress, task_id: str, grace: float) -> bool:
        fake = self._get(agent)
        if task_id not in fake.tasks:
            return False
        self.kills.append(task_id)

        async def die() -> None:
            await self.report(agent.agent_id, task_id, "TASK_KILLING")
            await self.report(agent.agent_id, task_id, "TASK_KILLED")

        asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(die()))
        return True

    async def ping(self, agent: AgentAddress) -> bool:
        return self.agent(agent.agent_id).up

    async def tasks(self, agent: AgentAddress) -> list[TaskStatus]:
        return list(self._get(agent).tasks.values())
