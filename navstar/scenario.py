"""The seed scenario on a running lab: post the example apps, wait for them, then use them as a
user would — resolve VIP names with the node resolver and curl them from an agent, saying which
task (and on which agent) answered each request.

```
examples/*.json ──POST /v2/apps──► master ──► tasks on agents ──► VIPs programmed, names in DNS
agent-1: dig <vip name> @198.51.100.1 ; curl http://<vip name>/ × N ──► who answered, on which agent
```
"""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from cluster.vip_labels import named_vip, parse_vip, vip_dns_name
from control.marathon_models import AppDefinition
from navstar.lab import LabState

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
# The app asking for a fixed service port (10000) first: a port-0 app posted before it would be
# given 10000, and Marathon refuses a service port another app holds (422).
SCENARIO_APPS = ("nginx-marathon-lb.json", "web-vip.json", "nginxdocker-vip.json", "nginxmesos-overlay.json",
                 "nginxdocker-overlay.json")


@dataclass
class TaskOutcome:
    task_id: str
    app_id: str
    agent: str              # the lab node it runs on (agent-1, …)
    address: str            # ip:port it serves on (the agent's address, or its overlay address)


@dataclass
class AppOutcome:
    app_id: str
    instances: int
    running: int = 0
    addresses: list[str] = field(default_factory=list)
    tasks: list[TaskOutcome] = field(default_factory=list)
    created: bool = False
    message: str = ""


@dataclass
class VipOutcome:
    name: str
    address: str
    source: str = ""                                          # the agent curling it
    backends: list[tuple[str, str]] = field(default_factory=list)   # (ip:port, agent)
    answers: Counter = field(default_factory=Counter)          # task id → requests it answered
    answer_agents: dict[str, str] = field(default_factory=dict)  # task id → its agent
    failures: int = 0
    dig_command: str = ""
    dig: str = ""                                             # the resolver's answer section

    @property
    def from_other_agents(self) -> Counter:
        """Requests answered by backends on agents other than the one curling: agent → count."""
        found: Counter = Counter()
        for task, count in self.answers.items():
            agent = self.answer_agents.get(task, "?")
            if agent != self.source:
                found[agent] += count
        return found


def run_scenario(state: LabState, progress: Callable[[str], None], requests: int = 9,
                 timeout: float = 60.0) -> tuple[list[AppOutcome], list[VipOutcome]]:
    headers = {"Authorization": f"token={state.secret()}"}
    apps: list[AppOutcome] = []
    expected: dict[str, str] = {}      # VIP label ("<name>:<port>") → the app that declares it
    with httpx.Client(base_url=state.master_url, headers=headers, timeout=10) as client:
        for name in SCENARIO_APPS:
            definition = json.loads((EXAMPLES / name).read_text())
            app_id = "/" + definition["id"].strip("/")
            expected.update(dict.fromkeys(_declared_vips(definition), app_id))
            outcome = AppOutcome(app_id, int(definition.get("instances", 1)))
            resp = client.post("/v2/apps", json=definition)
            outcome.created = resp.status_code in (200, 201)
            if resp.status_code == 409:
                outcome.message = "already deployed"
            elif not outcome.created:
                outcome.message = f"HTTP {resp.status_code}: {resp.text[:200]}"
            progress(f"posted {app_id}")
            apps.append(outcome)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for outcome in apps:
                tasks = client.get(f"/v2/apps{outcome.app_id}/tasks").json().get("tasks", [])
                running = [t for t in tasks if t.get("state") == "TASK_RUNNING"]
                outcome.running = len(running)
                outcome.addresses = [_address(t) for t in running]
                outcome.tasks = [TaskOutcome(t["id"], outcome.app_id, _agent_of(state, t), _address(t))
                                 for t in running]
            waiting = [o.app_id for o in apps if o.running < o.instances]
            if not waiting:
                break
            progress(f"waiting for {', '.join(waiting)}")
            time.sleep(0.5)
    running = {o.app_id: o.running for o in apps}
    tasks = [task for app in apps for task in app.tasks]
    vips = _exercise_vips(state, progress, requests, {label: running[app] for label, app in expected.items()},
                          tasks)
    return apps, vips


def _address(task: dict) -> str:
    return (f"{(task.get('ipAddresses') or [{}])[0].get('ipAddress') or task.get('host')}"
            + (f":{task['ports'][0]}" if task.get("ports") else ""))


def _agent_of(state: LabState, task: dict) -> str:
    """The lab node a task runs on: its agent id is the node's name; else its host's address."""
    names = {node.name for node in state.nodes}
    if task.get("slaveId") in names:
        return str(task["slaveId"])
    return next((node.name for node in state.nodes if node.ip == task.get("host")), str(task.get("host")))


def _backend_agent(state: LabState, ip: str, tasks: list[TaskOutcome]) -> str:
    """The agent behind a VIP backend address: a node's own address, or a task's overlay address."""
    node = next((n.name for n in state.nodes if n.ip == ip), None)
    if node is not None:
        return node
    return next((t.agent for t in tasks if t.address.split(":")[0] == ip), "?")


def _declared_vips(definition: dict) -> list[str]:
    """The named VIPs an app definition declares, as ``/v1/vips`` lists them (``<dns name>:<port>``):
    Marathon's reading of its ports (``AppDefinition.port_labels``) and the shared VIP label rules."""
    found = []
    for labels in AppDefinition.model_validate(definition).port_labels():
        for key, value in labels.items():
            if named_vip(key, value) is not None:
                spec = parse_vip(value)
                found.append(f"{vip_dns_name(spec.name or '', 'marathon')}:{spec.port}")
    return found


def _exercise_vips(state: LabState, progress: Callable[[str], None], requests: int,
                   expected: dict[str, int], tasks: list[TaskOutcome],
                   timeout: float = 30.0) -> list[VipOutcome]:
    """Waits until agent-1 serves every ``expected`` VIP with as many backends as its app has
    running tasks (VIPs appear one view at a time), then digs and curls each."""
    agent = state.nodes[1]

    def listed() -> list[dict]:
        answer = _in_node(state, agent.name, ["curl", "-s", "http://127.0.0.1:62080/v1/vips"])
        return json.loads(answer.stdout or "[]")

    outcomes = []
    deadline = time.monotonic() + timeout
    vips = listed()
    while time.monotonic() < deadline:
        backends = {vip["vip"]: len(vip["backend"]) for vip in vips}
        missing = [label for label, count in expected.items() if backends.get(label, 0) < count]
        if not missing:
            break
        progress(f"waiting for VIPs on {agent.name}: {', '.join(missing)}")
        time.sleep(0.5)
        vips = listed()
    for vip in vips:
        name, _, port = vip["vip"].rpartition(":")
        short = _in_node(state, agent.name, ["dig", "+short", "@198.51.100.1", name])
        dig = ["dig", "@198.51.100.1", name, "+noall", "+answer"]
        outcome = VipOutcome(vip["vip"], short.stdout.strip() or "(no answer)", source=agent.name,
                             dig_command=" ".join(dig),
                             dig=_in_node(state, agent.name, dig).stdout.strip() or "(no answer)")
        outcome.backends = [(f"{b['ip']}:{b['port']}", _backend_agent(state, b["ip"], tasks))
                            for b in vip["backend"]]
        progress(f"curl http://{vip['vip']}/ × {requests} from {agent.name}")
        by_id = {t.task_id: t.agent for t in tasks}
        for _ in range(requests):
            curl = _in_node(state, agent.name, ["curl", "-s", "-m", "2", f"http://{name}:{port}/"])
            if curl.returncode == 0 and curl.stdout:
                who = _who(curl.stdout)
                outcome.answers[who] += 1
                outcome.answer_agents[who] = by_id.get(who, "?")
            else:
                outcome.failures += 1
        outcomes.append(outcome)
    return outcomes


def _who(body: str) -> str:
    """The task that answered: its id is the whole body (web) or inside nginx's page."""
    text = body.strip()
    if "<p>" in text:
        text = text.split("<p>", 1)[1].split("</p>", 1)[0]
    return text.splitlines()[0].strip() if text else "(empty)"


def _in_node(state: LabState, node: str, command: list[str]) -> subprocess.CompletedProcess:
    namespace = state.node(node).namespace
    return subprocess.run(["ip", "netns", "exec", namespace, *command], capture_output=True, text=True,
                          timeout=30)
