"""The batch framework's scheduler: jobs of N command tasks run on offers from the master's v1
scheduler API, holding nothing while idle.

```
submit(job) ─► pending tasks ─► REVIVE ─► OFFERS ─► pack tasks (cpus, mem) ─► ACCEPT LAUNCH
                                            └─ nothing to run ─► DECLINE (refuse 60 s) ─► SUPPRESS
UPDATE ─► task state (+ ACKNOWLEDGE its uuid) ─► job done when every task ended
stream lost ─► SUBSCRIBE again with the framework id (its tasks survive failover_timeout) ─► RECONCILE
started anew ─► fails over into the framework of the same name and role a predecessor left disconnected
```

Talks to the master only over HTTP (``POST /api/v1/scheduler``, RecordIO events). One asyncio
loop; ``run()`` never returns (it re-subscribes after any failure, a second apart).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx

from batch.recordio import RecordIOError, RecordReader

log = logging.getLogger("navstar.batch")

TERMINAL = frozenset({"TASK_FINISHED", "TASK_FAILED", "TASK_KILLED", "TASK_LOST", "TASK_ERROR", "TASK_DROPPED",
                      "TASK_GONE", "TASK_GONE_BY_OPERATOR", "TASK_UNKNOWN"})
IDLE_REFUSE_SECONDS = 60.0
BUSY_REFUSE_SECONDS = 1.0


class SubscribeFailed(Exception):
    pass


@dataclass
class BatchTask:
    index: int
    task_id: str
    state: str = "PENDING"          # until launched; then the Mesos state
    agent_id: str | None = None
    message: str = ""
    launched_at: float | None = None
    ended_at: float | None = None

    def as_json(self) -> dict[str, Any]:
        return {"index": self.index, "task_id": self.task_id, "state": self.state, "agent_id": self.agent_id,
                "message": self.message, "launched_at": self.launched_at, "ended_at": self.ended_at}


@dataclass
class Job:
    job_id: str
    cmd: str
    cpus: float
    mem: float
    created_at: float
    tasks: list[BatchTask] = field(default_factory=list)
    finished_at: float | None = None
    done_event: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def done(self) -> bool:
        return all(task.state in TERMINAL for task in self.tasks)

    def as_json(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for task in self.tasks:
            counts[task.state] = counts.get(task.state, 0) + 1
        return {"id": self.job_id, "cmd": self.cmd, "parallel": len(self.tasks), "cpus": self.cpus, "mem": self.mem,
                "created_at": self.created_at, "finished_at": self.finished_at, "done": self.done,
                "succeeded": counts.get("TASK_FINISHED", 0),
                "failed": sum(n for state, n in counts.items() if state in TERMINAL and state != "TASK_FINISHED"),
                "states": counts, "tasks": [task.as_json() for task in self.tasks]}


class BatchFramework:
    def __init__(self, master: str, name: str, role: str = "*", principal: str | None = None,
                 secret: str | None = None, failover_timeout: float = 300.0, webui_url: str = "") -> None:
        self.name = name
        self.role = role
        self.principal = principal or name
        self.failover_timeout = failover_timeout
        self.webui_url = webui_url
        auth = httpx.BasicAuth(self.principal, secret) if secret else None
        # Reads wait for at most three missed heartbeats (15 s each by default) before giving up.
        self.http = httpx.AsyncClient(base_url=master.rstrip("/"), auth=auth,
                                      timeout=httpx.Timeout(10.0, read=50.0))
        self.framework_id: str | None = None
        self.stream_id: str | None = None
        self.connected = False
        self.suppressed = False
        self.jobs: dict[str, Job] = {}
        self._tasks: dict[str, tuple[Job, BatchTask]] = {}
        self._sequence = 0
        self.last_error = ""
        self._acks: set[asyncio.Future[bool]] = set()

    # ---- jobs ------------------------------------------------------------------------------
    async def submit(self, cmd: str, parallel: int, cpus: float, mem: float) -> Job:
        self._sequence += 1
        job_id = f"job{self._sequence}-{uuid.uuid4().hex[:6]}"
        job = Job(job_id, cmd, cpus, mem, time.time())
        job.tasks = [BatchTask(index, f"{job_id}-{index}") for index in range(parallel)]
        for task in job.tasks:
            self._tasks[task.task_id] = (job, task)
        self.jobs[job_id] = job
        log.info("job %s: %d tasks of %r", job_id, parallel, cmd)
        if self.connected:
            await self._revive()
        return job

    def pending(self) -> list[tuple[Job, BatchTask]]:
        return [(job, task) for job in self.jobs.values() for task in job.tasks if task.state == "PENDING"]

    # ---- the stream ----------------------------------------------------------------------------
    async def run(self) -> None:
        while True:
            try:
                await self._session()
            except (httpx.HTTPError, RecordIOError, SubscribeFailed) as exc:
                self.last_error = str(exc) or type(exc).__name__
                log.warning("scheduler stream: %s; subscribing again", self.last_error)
            self.connected = False
            await asyncio.sleep(1.0)

    async def _adopt_previous(self) -> None:
        """A replaced scheduler (its Marathon task restarted elsewhere) fails over into the
        framework its predecessor left disconnected (same name and role), so the tasks still
        running are kept rather than killed at the failover timeout; their jobs are not known
        any more (jobs live in memory), but their updates are acknowledged and their resources
        return as they end."""
        try:
            response = await self.http.get("/master/frameworks")
            frameworks = response.json().get("frameworks", []) if response.status_code == 200 else []
        except (httpx.HTTPError, ValueError):
            return
        for framework in frameworks:
            if framework.get("name") == self.name and framework.get("role") == self.role \
                    and framework.get("connected") is False:
                self.framework_id = framework["id"]
                log.info("failing over into %s, left by a previous scheduler", self.framework_id)
                return

    async def _session(self) -> None:
        if self.framework_id is None:
            await self._adopt_previous()
        info: dict[str, Any] = {"user": "nobody", "name": self.name, "roles": [self.role],
                                "failover_timeout": self.failover_timeout, "principal": self.principal,
                                "capabilities": [{"type": "MULTI_ROLE"}]}
        if self.webui_url:
            info["webui_url"] = self.webui_url
        call: dict[str, Any] = {"type": "SUBSCRIBE", "subscribe": {"framework_info": info}}
        if self.framework_id:
            info["id"] = {"value": self.framework_id}
            call["framework_id"] = {"value": self.framework_id}
        async with self.http.stream("POST", "/api/v1/scheduler", json=call,
                                    headers={"Accept": "application/json"}) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode(errors="replace")[:300]
                raise SubscribeFailed(f"SUBSCRIBE answered {response.status_code}: {text}")
            self.stream_id = response.headers.get("Mesos-Stream-Id")
            reader = RecordReader()
            async for chunk in response.aiter_bytes():
                for event in reader.feed(chunk):
                    await self._on_event(event)

    async def _on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "SUBSCRIBED":
            resumed = self.framework_id is not None
            self.framework_id = event["subscribed"]["framework_id"]["value"]
            self.connected = True
            self.last_error = ""
            log.info("subscribed as %s (%s)", self.framework_id, "failed over" if resumed else "new")
            if resumed:
                await self._call("RECONCILE", {"tasks": []})
            if self.pending():
                await self._revive()
            else:
                await self._suppress()
        elif kind == "OFFERS":
            await self._use_offers(event["offers"].get("offers", []))
        elif kind == "UPDATE":
            await self._on_update(event["update"]["status"])
        elif kind == "ERROR":
            self.last_error = event.get("error", {}).get("message", "")
            log.warning("master says: %s", self.last_error)

    async def _use_offers(self, offers: list[dict[str, Any]]) -> None:
        pending = self.pending()
        declined = []
        for offer in offers:
            cpus, mem = _scalar(offer, "cpus"), _scalar(offer, "mem")
            agent_id = offer["agent_id"]["value"]
            launches = []
            while pending and pending[0][0].cpus <= cpus + 1e-9 and pending[0][0].mem <= mem + 1e-9:
                job, task = pending.pop(0)
                cpus, mem = cpus - job.cpus, mem - job.mem
                task.state, task.agent_id, task.launched_at = "TASK_STAGING", agent_id, time.time()
                launches.append(_task_info(job, task, agent_id))
            if launches:
                await self._call("ACCEPT", {"offer_ids": [offer["id"]],
                                            "operations": [{"type": "LAUNCH", "launch": {"task_infos": launches}}],
                                            "filters": {"refuse_seconds": BUSY_REFUSE_SECONDS}})
            else:
                declined.append(offer["id"])
        if declined:
            refuse = BUSY_REFUSE_SECONDS if pending else IDLE_REFUSE_SECONDS
            await self._call("DECLINE", {"offer_ids": declined, "filters": {"refuse_seconds": refuse}})
        if not pending:
            await self._suppress()

    async def _on_update(self, status: dict[str, Any]) -> None:
        task_id = status["task_id"]["value"]
        entry = self._tasks.get(task_id)
        if entry is not None and status.get("reason") == "REASON_INVALID_OFFERS" and entry[1].state == "TASK_STAGING":
            # The offer was rescinded before our ACCEPT reached the master (e.g. a SUPPRESS we sent
            # while the offer was on its way): the task never started, it waits for another offer.
            entry[1].state, entry[1].agent_id = "PENDING", None
            await self._revive()
        elif entry is not None:
            job, task = entry
            if task.state not in TERMINAL:
                task.state = status["state"]
                task.message = status.get("message", "")
                task.agent_id = status.get("agent_id", {}).get("value") or task.agent_id
                if task.state in TERMINAL:
                    task.ended_at = time.time()
                    if job.done and job.finished_at is None:
                        job.finished_at = time.time()
                        job.done_event.set()
                        log.info("job %s done: %s", job.job_id, job.as_json()["states"])
        if "uuid" in status:
            # Acknowledged in the background: the stream keeps moving (offers wait behind updates).
            ack = asyncio.ensure_future(self._call("ACKNOWLEDGE", {
                "agent_id": status["agent_id"], "task_id": status["task_id"], "uuid": status["uuid"]}))
            self._acks.add(ack)
            ack.add_done_callback(self._acks.discard)

    async def _revive(self) -> None:
        if await self._call("REVIVE"):
            self.suppressed = False

    async def _suppress(self) -> None:
        if not self.suppressed and await self._call("SUPPRESS"):
            self.suppressed = True

    async def _call(self, kind: str, body: dict[str, Any] | None = None) -> bool:
        """One call on our stream; False (logged) when it did not go through."""
        if not self.framework_id or not self.stream_id:
            return False
        message: dict[str, Any] = {"type": kind, "framework_id": {"value": self.framework_id}}
        if body is not None:
            message[kind.lower()] = body
        try:
            response = await self.http.post("/api/v1/scheduler", json=message,
                                            headers={"Mesos-Stream-Id": self.stream_id})
        except httpx.HTTPError as exc:
            log.warning("%s call failed: %s", kind, exc)
            return False
        if response.status_code != 202:
            log.warning("%s call answered %d: %s", kind, response.status_code, response.text[:200])
            return False
        return True

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role, "framework_id": self.framework_id, "connected": self.connected,
                "suppressed": self.suppressed, "pending_tasks": len(self.pending()), "last_error": self.last_error,
                "jobs": len(self.jobs)}

    async def close(self) -> None:
        await self.http.aclose()


def _scalar(offer: dict[str, Any], name: str) -> float:
    return float(sum(r.get("scalar", {}).get("value", 0.0) for r in offer.get("resources", [])
                     if r.get("name") == name))


def _task_info(job: Job, task: BatchTask, agent_id: str) -> dict[str, Any]:
    return {
        "name": task.task_id, "task_id": {"value": task.task_id}, "agent_id": {"value": agent_id},
        "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": job.cpus}},
                      {"name": "mem", "type": "SCALAR", "scalar": {"value": job.mem}}],
        "command": {"value": job.cmd, "environment": {"variables": [
            {"name": "BATCH_JOB_ID", "value": job.job_id}, {"name": "BATCH_TASK_INDEX", "value": str(task.index)}]}},
    }
