"""Issue 20 in a real lab: frameworks next to Marathon through the master's v1 scheduler API.

- The real client mesoshttp 0.4.2, run in an agent's namespace, subscribes to the master, gets
  offers, launches a command task, sees TASK_RUNNING and TASK_FINISHED and acknowledges them (no
  update is sent again); while the task runs, its Mesos-DNS name answers from another agent.
- The batch framework runs as a Marathon app (its scheduler registers with the master), takes a
  20-task job through Admin Router (``navstar job run``), runs it on the three agents and, idle
  again, holds no resources; after a master restart it re-subscribes under its id and runs jobs.
- ``navstar lab scenario frameworks``: two batch frameworks weighted 1 and 2 settle near 1:2.
- From the root namespace, a scheduler subscribes through Admin Router (``/mesos/api/v1/scheduler``)
  and gets its events as they happen.

One three-agent lab for the module (under ``flock /tmp/navstar-lab.lock``).
"""

from __future__ import annotations

import json
import queue
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

from batch.recordio import RecordReader
from tests.e2e.conftest import NAVSTAR, REPO, LabHandle, wait_until
from tests.e2e.traffic import dig

MESOSHTTP_SCHEDULER = textwrap.dedent('''
    import json, sys, threading, time
    from mesoshttp.client import MesosClient
    from requests.auth import HTTPBasicAuth

    master, secret, gate = sys.argv[1], sys.argv[2], sys.argv[3]
    client = MesosClient(mesos_urls=[master], frameworkName="mesoshttp-e2e", frameworkUser="nobody")
    client.requests_auth = HTTPBasicAuth("e2e", secret)
    seen = {"launched": False, "finished_at": None, "updates": []}

    def say(**fields):
        print(json.dumps(fields), flush=True)

    def on_offers(offers):
        for offer in offers:
            if not seen["launched"]:
                seen["launched"] = True
                say(offer=offer.get_offer()["agent_id"]["value"])
                offer.accept([{"name": "hello", "task_id": {"value": "hello-e2e"},
                               "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.1}},
                                             {"name": "mem", "type": "SCALAR", "scalar": {"value": 32}}],
                               "command": {"value": "while [ ! -e %s ]; do sleep 0.2; done" % gate}}])
            else:
                offer.decline({"filters": {"refuse_seconds": 120}})

    def on_update(update):
        status = update["status"]
        seen["updates"].append(status["state"])
        say(state=status["state"], agent=status["agent_id"]["value"], acknowledged="uuid" in status)
        if status["state"] == "TASK_FINISHED":
            seen["finished_at"] = time.time()

    client.on(MesosClient.OFFERS, on_offers)
    client.on(MesosClient.UPDATE, on_update)
    thread = threading.Thread(target=client.register, daemon=True)
    thread.start()
    deadline = time.time() + 60
    # After TASK_FINISHED, 7 s more: an update the master had to send again would show up here.
    while time.time() < deadline and (seen["finished_at"] is None or time.time() - seen["finished_at"] < 7):
        time.sleep(0.2)
    say(done=True, updates=seen["updates"])
    client.disconnect_framework()
''')


@pytest.fixture(scope="module")
def lab(lab_factory) -> LabHandle:
    return lab_factory(agents=3)


class LineReader:
    """Lines of a child's stdout, read in a thread (waits never block the test forever)."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        threading.Thread(target=self._read, args=(process,), daemon=True).start()

    def _read(self, process: subprocess.Popen) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.lines.put(line)

    def until(self, predicate, timeout: float, message: str) -> dict[str, Any]:
        def look():
            while not self.lines.empty():
                line = self.lines.get_nowait()
                try:
                    self.seen.append(json.loads(line))
                except ValueError:
                    continue
            return next((event for event in self.seen if predicate(event)), None)
        return wait_until(look, timeout, message=f"{message}; seen {self.seen}")


def test_mesoshttp_from_an_agent_runs_a_task_with_a_dns_name(lab: LabHandle, tmp_path: Path):
    script = tmp_path / "scheduler.py"
    script.write_text(MESOSHTTP_SCHEDULER)
    gate_dir = Path(tempfile.mkdtemp(prefix="navstar-e2e-gate-"))
    gate_dir.chmod(0o755)          # the task runs as the agent's unprivileged user
    gate = gate_dir / "done"
    process = subprocess.Popen([*NAVSTAR, "lab", "exec", "--name", lab.name, "agent-1", "--", sys.executable,
                                str(script), lab.state.inside_mesos_url, lab.state.secret() or "", str(gate)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        reader = LineReader(process)
        running = reader.until(lambda e: e.get("state") == "TASK_RUNNING", 40, "mesoshttp sees TASK_RUNNING")
        agent_ip = lab.ip(running["agent"])
        wait_until(lambda: dig(lab, "agent-2", "hello.mesoshttp-e2e.mesos") == [agent_ip], 20,
                   message="hello.mesoshttp-e2e.mesos answers with its agent's address")
        with lab.mesos() as mesos:
            frameworks = mesos.get("/master/frameworks").json()["frameworks"]
        mine = next(f for f in frameworks if f["name"] == "mesoshttp-e2e")
        assert [t["id"] for t in mine["tasks"]] == ["hello-e2e"] and mine["principal"] == "e2e"
        listed = lab.cli("task", "list", "--json")
        assert any(t["id"] == "hello-e2e" and t["appId"] == "(mesoshttp-e2e)" for t in json.loads(listed.stdout))
        gate.touch()
        done = reader.until(lambda e: e.get("done"), 40, "the scheduler is done")
        assert done["updates"] == ["TASK_RUNNING", "TASK_FINISHED"], "acknowledged updates are not sent again"
        assert process.wait(20) == 0, process.stderr.read() if process.stderr else ""
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        shutil.rmtree(gate_dir, ignore_errors=True)


def test_scheduler_api_streams_through_admin_router(lab: LabHandle):
    """From outside the lab only Admin Router answers: a scheduler there subscribes at
    /mesos/api/v1/scheduler and its events arrive as they happen (nginx does not hold them)."""
    subscribe = {"type": "SUBSCRIBE", "subscribe": {"framework_info": {"user": "nobody", "name": "outside"}}}
    with lab.mesos() as mesos:
        with mesos.stream("POST", "/api/v1/scheduler", json=subscribe) as stream:
            assert stream.status_code == 200, stream.read()
            # One iterator kept open: leaving a for loop over iter_bytes() would close the stream.
            reader, events, chunks = RecordReader(), [], stream.iter_bytes()
            while not any(e["type"] == "OFFERS" for e in events):
                events += reader.feed(next(chunks))
            assert events[0]["type"] == "SUBSCRIBED"
            framework_id = events[0]["subscribed"]["framework_id"]["value"]
            teardown = mesos.post("/api/v1/scheduler", json={"type": "TEARDOWN", "framework_id": {"value": framework_id}},
                                  headers={"Mesos-Stream-Id": stream.headers["Mesos-Stream-Id"]})
            assert teardown.status_code == 202, teardown.text
            assert b"Framework has been removed" in b"".join(chunks)     # the master ends the stream


def test_batch_framework_runs_a_20_task_job_on_three_agents_and_then_holds_nothing(lab: LabHandle):
    master_url = lab.state.inside_mesos_url
    lab.add_app({
        "id": "/batch", "instances": 1, "cpus": 0.1, "mem": 128,
        "cmd": f"{sys.executable} -m batch --master {master_url} --listen 0.0.0.0:$PORT0 "
               "--name batch --role batch",
        "env": {"MESOS_SECRET": lab.state.secret() or "", "PYTHONPATH": str(REPO)},
        "portDefinitions": [{"port": 0, "name": "api"}],
        "labels": {"DCOS_SERVICE_NAME": "batch"},
        "healthChecks": [{"protocol": "HTTP", "path": "/ping", "portIndex": 0, "intervalSeconds": 1,
                          "gracePeriodSeconds": 30}],
    })
    try:
        lab.running("/batch", 1, timeout=60, healthy=True)

        def batch_framework() -> dict[str, Any] | None:
            with lab.mesos() as mesos:
                frameworks = mesos.get("/master/frameworks").json()["frameworks"]
            return next((f for f in frameworks if f["name"] == "batch" and f["connected"]), None)

        wait_until(lambda: (f := batch_framework()) and not f["active"], 30,
                   message="the batch framework registered and idle (suppressed)")
        run = subprocess.run([*NAVSTAR, "job", "run", "--lab", lab.name, "--service", "batch", "--parallel", "20",
                              "--cpus", "0.25", "--mem", "16", "--json", "--wait", "90", "--", "sleep", "2"],
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stdout + run.stderr
        job = json.loads(run.stdout)
        assert job["succeeded"] == 20 and job["failed"] == 0
        agents = {lab.ip(name): name for name in lab.agents}
        used_agents = {t["agent_id"] for t in job["tasks"]}
        assert len(used_agents) == 3, f"20 tasks of 0.25 cpus need every agent: {used_agents} of {agents}"
        # Idle again: no tasks, no offers, nothing held.
        idle = wait_until(lambda: (f := batch_framework()) and not f["tasks"] and not f["offered_resources"]
                          and not any(f["used_resources"].values()) and not f["active"] and f, 20,
                          message="the idle batch framework holds nothing")
        # The master restarts: the framework re-subscribes under its id (reloaded from the master's
        # store, registered_time kept) and takes jobs again.
        master = lab.state.master.name
        restarted = subprocess.run([*NAVSTAR, "lab", "restart", "--name", lab.name, master], capture_output=True,
                                   text=True, timeout=120)
        assert restarted.returncode == 0, restarted.stdout + restarted.stderr
        back = wait_until(batch_framework, 40, message="the batch framework re-subscribed after the master restart")
        assert back["id"] == idle["id"] and back["registered_time"] == idle["registered_time"]
        again = subprocess.run([*NAVSTAR, "job", "run", "--lab", lab.name, "--service", "batch", "--parallel", "3",
                                "--json", "--wait", "60", "--", "true"], capture_output=True, text=True, timeout=90)
        assert again.returncode == 0, again.stdout + again.stderr
    finally:
        lab.remove_app("/batch")


def test_scenario_frameworks_settles_drf_near_one_to_two(lab: LabHandle):
    """Two batch frameworks, roles weighted 1 and 2, fill the lab next to a Marathon app: the
    scenario exits 0 once heavy ÷ light averages within 10% of 2; afterwards neither is left."""
    run = subprocess.run([*NAVSTAR, "lab", "scenario", "frameworks", "--name", lab.name],
                         capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "DRF settled" in run.stdout
    with lab.mesos() as mesos:
        frameworks = mesos.get("/master/frameworks").json()["frameworks"]
    assert not [f["name"] for f in frameworks if f["name"].startswith("batch-")]
