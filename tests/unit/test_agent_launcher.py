"""The agent's side of the launch protocol: launches answered at once, idempotent by task id,
busy beyond the queue's capacity, queued tasks visible to reconciliation and killable."""

import threading

from control.agent.launcher import Launcher
from control.protocol import TaskLaunch, TaskStatus
from tests.waiting import wait_until_async


class StubExecutor:
    """Starts nothing until ``go`` is set; remembers what it started (idempotent by id)."""

    def __init__(self) -> None:
        self.tasks: dict[str, TaskLaunch] = {}
        self.started: list[str] = []
        self.statuses: list[TaskStatus] = []
        self.go = threading.Event()

    def knows(self, task_id: str) -> bool:
        return task_id in self.tasks

    def launch(self, launch: TaskLaunch) -> None:
        self.go.wait(10)
        if launch.task_id not in self.tasks:
            self.tasks[launch.task_id] = launch
            self.started.append(launch.task_id)

    def on_status(self, status: TaskStatus) -> None:
        self.statuses.append(status)


def launch(task_id: str) -> TaskLaunch:
    return TaskLaunch(task_id=task_id, app_id="/a", name="a", cmd="sleep 1")


async def test_launches_are_answered_at_once_idempotent_and_busy_beyond_capacity():
    executor = StubExecutor()
    started: list[str] = []
    launcher = Launcher(executor, capacity=3, workers=1,  # type: ignore[arg-type]
                        on_started=lambda done: started.append(done.task_id))
    try:
        first = launcher.submit([launch("t1"), launch("t2"), launch("t3"), launch("t4")])
        # Nothing has started (the executor is held), yet every launch has its answer.
        assert first == {"t1": "accepted", "t2": "accepted", "t3": "accepted", "t4": "busy"}
        assert launcher.submit([launch("t2")]) == {"t2": "known"}
        assert {s.task_id: s.state for s in launcher.statuses()}.get("t3") == "TASK_STAGING"
        # A queued task that is killed never starts and is reported killed.
        assert launcher.kill("t3") is True and launcher.kill("t3") is False
        assert [(s.task_id, s.state) for s in executor.statuses] == [("t3", "TASK_KILLED")]
        executor.go.set()
        await wait_until_async(lambda: launcher.queued == 0 and len(executor.started) == 2,
                               message="the queue started")
        assert sorted(executor.started) == ["t1", "t2"] and sorted(started) == ["t1", "t2"]
        # Resent launches of started tasks are known, never started again.
        assert launcher.submit([launch("t1"), launch("t4")]) == {"t1": "known", "t4": "accepted"}
        await wait_until_async(lambda: len(executor.started) == 3, message="t4 started")
        assert executor.started.count("t1") == 1
    finally:
        await launcher.close()


async def test_a_task_being_started_stays_visible_to_reconciliation_until_the_executor_lists_it():
    # The duplicate launches of a burst: a worker had taken the task from the queue and the executor
    # was still starting it (netns, cgroup, fork) when the master reconciled; GET /v1/tasks listed it
    # nowhere, so the master, whose launch the agent had acknowledged, took it for lost and launched
    # a second task for the app, while the first one started too.
    import httpx

    from control.agent.api import agent_api

    class HeldExecutor(StubExecutor):
        """Lists what it started, as the executor's ``statuses()`` does."""

        def __init__(self) -> None:
            super().__init__()
            del self.statuses           # the method below, not the stub's list of reports

        def statuses(self) -> list[TaskStatus]:     # type: ignore[override]
            return [TaskStatus(task_id=t, state="TASK_RUNNING", timestamp=0.0) for t in list(self.tasks)]

    executor = HeldExecutor()
    launcher = Launcher(executor, workers=1)  # type: ignore[arg-type]
    api = agent_api("agent-1", executor, None, launcher=launcher)  # type: ignore[arg-type]
    client = httpx.AsyncClient(transport=httpx.ASGITransport(api), base_url="http://agent:5051")
    try:
        answer = await client.post("/v1/tasks", json={"launches": [launch("t1").model_dump()]})
        assert answer.json()["results"] == {"t1": "accepted"}
        await wait_until_async(lambda: launcher.queued == 0, message="a worker took t1")
        # In the worker's hands, the executor still starting it: reconciliation sees it staging.
        listed = {s["task_id"]: s["state"] for s in (await client.get("/v1/tasks")).json()}
        assert listed == {"t1": "TASK_STAGING"}
        assert launcher.submit([launch("t1")]) == {"t1": "known"}     # a resend is not queued again
        executor.go.set()
        await wait_until_async(lambda: executor.started == ["t1"], message="t1 started")
        listed = {s["task_id"]: s["state"] for s in (await client.get("/v1/tasks")).json()}
        assert listed == {"t1": "TASK_RUNNING"}
    finally:
        executor.go.set()
        await client.aclose()
        await launcher.close()
