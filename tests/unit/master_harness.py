"""A master with in-memory agents (``FakeAgents``) and HTTP clients on both its ports (ASGI)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from control.agent_client import FakeAgents
from control.http import master_apps
from control.master import Master
from control.registry import AgentRegistration
from control.state import StateStore
from tests.waiting import wait_until


class FakeClock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def registration(index: int, cpus: float = 2, mem: float = 1024, ports: tuple[int, int] = (31000, 31100),
                 **attributes: Any) -> dict[str, Any]:
    return {"agent_id": f"agent-{index}", "hostname": f"agent-{index}", "ip": f"198.18.0.{10 + index}",
            "resources": {"cpus": cpus, "mem": mem, "disk": 1000, "ports": [{"begin": ports[0], "end": ports[1]}]},
            "attributes": attributes}


class Cluster:
    def __init__(self, state_dir: Path | str | None = None, secret: str | None = None,
                 fake: FakeAgents | None = None, clock: FakeClock | None = None,
                 store: StateStore | None = None) -> None:
        self.clock = clock or FakeClock()
        self.fake = fake or FakeAgents()
        self.secret = secret
        self.master = Master(secret=secret, agent_timeout=5.0, state_dir=str(state_dir) if state_dir else None,
                             agent_client=self.fake, clock=self.clock, advertise_ip="198.18.0.2",
                             store=store)
        self.fake.sink = self.master.scheduler.on_status
        # Reconciliation rounds that confirm an orphan follow at once (settle waits for them).
        self.master.scheduler.orphan_confirm_seconds = 0.0
        self.master.scheduler.reconcile_retry_seconds = 0.0
        headers = {"Authorization": f"token={secret}"} if secret else {}
        self.apps = master_apps(self.master)
        self.marathon = httpx.AsyncClient(transport=httpx.ASGITransport(self.apps.marathon),
                                          base_url="http://master:8080", headers=headers)
        self.mesos = httpx.AsyncClient(transport=httpx.ASGITransport(self.apps.mesos),
                                       base_url="http://master:5050", headers=headers)

    @property
    def scheduler(self):
        return self.master.scheduler

    async def register(self, index: int, **kwargs: Any) -> None:
        resp = await self.mesos.post("/v1/agents", json=registration(index, **kwargs))
        assert resp.status_code == 200, resp.text
        await self.settle(1)

    async def settle(self, rounds: int = 4) -> None:
        """Cycles the scheduler and lets fake agents answer, ``rounds`` times."""
        for _ in range(rounds):
            await self.scheduler.cycle()
            for _ in range(5):
                await asyncio.sleep(0)
            await self.scheduler.settle()
            for _ in range(5):
                await asyncio.sleep(0)

    async def post_app(self, app: dict[str, Any]) -> httpx.Response:
        resp = await self.marathon.post("/v2/apps", json=app)
        await self.settle()
        return resp

    def running(self, app_id: str) -> list:
        return [t for t in self.scheduler.app_tasks(app_id) if t.state == "TASK_RUNNING"]

    async def close(self) -> None:
        await self.marathon.aclose()
        await self.mesos.aclose()
        self.master.close()


@contextlib.asynccontextmanager
async def running_cluster(agents: int = 2, **kwargs: Any) -> AsyncIterator[Cluster]:
    """A master with ``agents`` registered fake agents; closed afterwards."""
    cluster = Cluster(**kwargs)
    try:
        for index in range(1, agents + 1):
            await cluster.register(index)
        yield cluster
    finally:
        await cluster.close()


class ServedMaster:
    """A master on 127.0.0.1 (ephemeral port) with its scheduler loop, in a background thread."""

    SECRET = "client-secret"

    def __init__(self) -> None:
        self.fake = FakeAgents()
        self.master = Master(secret=self.SECRET, agent_timeout=30, agent_client=self.fake, advertise_ip="127.0.0.1")
        self.fake.sink = self.master.scheduler.on_status
        self.socks = [socket.socket(), socket.socket()]
        for sock in self.socks:
            sock.bind(("127.0.0.1", 0))
        self.url, self.mesos_url = (f"http://127.0.0.1:{s.getsockname()[1]}" for s in self.socks)
        self.loop = asyncio.new_event_loop()
        self.servers = [uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False,
                                                      timeout_graceful_shutdown=1))
                        for app in master_apps(self.master)]
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        wait_until(lambda: all(s.started for s in self.servers), 10, message="uvicorn started")

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def main() -> None:
            for index in (1, 2):
                self.master.register_agent(AgentRegistration.model_validate(registration(index)))
            loop_task = asyncio.gather(self.master.scheduler.run(interval=0.05),
                                       self.master.frameworks.run(interval=0.1))
            await asyncio.gather(*(server.serve(sockets=[sock]) for server, sock in zip(self.servers, self.socks,
                                                                                       strict=True)))
            loop_task.cancel()
            await asyncio.gather(loop_task, return_exceptions=True)
            await self.master.scheduler.settle()

        self.loop.run_until_complete(main())

    def stop(self) -> None:
        for server in self.servers:
            server.should_exit = True
        self.thread.join(10)
        self.master.close()
