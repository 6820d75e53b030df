"""The real mesoshttp client (0.4.2) against a served master (uvicorn, fake agents): it
subscribes with HTTP Basic, reads the RecordIO stream, accepts an offer with a command task,
sees TASK_RUNNING and TASK_FINISHED and acknowledges both; and the raw stream's framing."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import httpx
import pytest
from mesoshttp.client import MesosClient
from requests.auth import HTTPBasicAuth
from typer.testing import CliRunner

from navstar.cli import app
from tests.unit.master_harness import ServedMaster
from tests.waiting import wait_until


@pytest.fixture
def served():
    master = ServedMaster()
    # Heartbeats every second: mesoshttp's reader notices its own disconnect only when data comes.
    master.master.frameworks.heartbeat_seconds = 1.0
    yield master
    master.stop()


def run_in_loop(served: ServedMaster, coro: Any) -> Any:
    return asyncio.run_coroutine_threadsafe(coro, served.loop).result(10)


def test_mesoshttp_launches_a_task_and_acknowledges_its_updates(served):
    client = MesosClient(mesos_urls=[served.mesos_url], frameworkName="hello-mesoshttp", frameworkUser="nobody")
    client.requests_auth = HTTPBasicAuth("hello-principal", ServedMaster.SECRET)
    client.set_failover_timeout(30)
    seen: dict[str, Any] = {"offers": 0, "states": [], "launched": None}

    def on_offers(offers: list) -> None:
        seen["offers"] += len(offers)
        for offer in offers:
            if seen["launched"] is None:
                body = offer.get_offer()
                seen["launched"] = body["agent_id"]["value"]
                offer.accept([{
                    "name": "hello", "task_id": {"value": "hello-1"},
                    "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.1}},
                                  {"name": "mem", "type": "SCALAR", "scalar": {"value": 32}}],
                    "command": {"value": "echo hello"}}])
            else:
                offer.decline({"filters": {"refuse_seconds": 60}})

    def on_update(update: dict) -> None:
        seen["states"].append(update["status"]["state"])

    client.on(MesosClient.OFFERS, on_offers)
    client.on(MesosClient.UPDATE, on_update)
    thread = threading.Thread(target=client.register, daemon=True)
    thread.start()
    try:
        wait_until(lambda: "TASK_RUNNING" in seen["states"], 15, message="mesoshttp saw TASK_RUNNING")
        frameworks = served.master.frameworks
        framework = frameworks.frameworks[client.frameworkId]
        assert framework.spec.principal == "hello-principal" and framework.spec.failover_timeout == 30
        assert served.fake.agent(seen["launched"]).launches[-1].cmd == "echo hello"
        listed = CliRunner().invoke(app, ["task", "list", "--master", served.url, "--mesos", served.mesos_url,
                                          "--token", ServedMaster.SECRET, "--json"])
        mine = [t for t in json.loads(listed.stdout) if t["id"] == "hello-1"]
        assert mine and mine[0]["appId"] == "(hello-mesoshttp)" and mine[0]["state"] == "TASK_RUNNING"
        run_in_loop(served, served.fake.report(seen["launched"], "hello-1", "TASK_FINISHED"))
        wait_until(lambda: "TASK_FINISHED" in seen["states"], 15, message="mesoshttp saw TASK_FINISHED")
        wait_until(lambda: not framework.pending, 10, message="every update acknowledged")
        assert seen["states"] == ["TASK_RUNNING", "TASK_FINISHED"]
    finally:
        client.disconnect_framework()     # closes the stream, no TEARDOWN: the framework may fail over
        thread.join(20)
    wait_until(lambda: not served.master.frameworks.frameworks[client.frameworkId].connected, 10,
               message="the closed stream disconnects the framework")


def test_stream_framing_headers_and_refusals(served):
    auth = {"Authorization": f"token={ServedMaster.SECRET}"}
    subscribe = {"type": "SUBSCRIBE", "subscribe": {"framework_info": {"user": "u", "name": "raw"}}}
    with httpx.Client(base_url=served.mesos_url, timeout=10) as anonymous:
        assert anonymous.post("/api/v1/scheduler", json=subscribe).status_code == 401
        assert anonymous.post("/api/v1/scheduler", json=subscribe, auth=("p", "wrong")).status_code == 401
    with httpx.Client(base_url=served.mesos_url, headers=auth, timeout=10) as http:
        with http.stream("POST", "/api/v1/scheduler", json=subscribe) as stream:
            assert stream.status_code == 200
            stream_id = stream.headers["Mesos-Stream-Id"]
            reader = stream.iter_bytes()
            buffer = b""
            events: list[dict[str, Any]] = []
            while len(events) < 2:
                buffer += next(reader)
                while b"\n" in buffer:
                    length, _, rest = buffer.partition(b"\n")
                    if len(rest) < int(length):
                        break
                    events.append(json.loads(rest[:int(length)]))
                    buffer = rest[int(length):]
            assert events[0]["type"] == "SUBSCRIBED"
            framework_id = events[0]["subscribed"]["framework_id"]["value"]
            # The OFFERS (agents of the served master), or the flushing heartbeat after SUBSCRIBED.
            assert events[1]["type"] in ("OFFERS", "HEARTBEAT")
            call = {"type": "SUPPRESS", "framework_id": {"value": framework_id}}
            assert http.post("/api/v1/scheduler", json=call).status_code == 400
            assert http.post("/api/v1/scheduler", json=call, headers={"Mesos-Stream-Id": stream_id}).status_code == 202
            teardown = {"type": "TEARDOWN", "framework_id": {"value": framework_id}}
            assert http.post("/api/v1/scheduler", json=teardown,
                             headers={"Mesos-Stream-Id": stream_id}).status_code == 202
            rest_of_stream = b"".join(reader)     # the master ends the stream after an ERROR
            assert b"Framework has been removed" in buffer + rest_of_stream
        state = http.get("/master/state").json()
        assert framework_id in [f["id"] for f in state["completed_frameworks"]]


def _launching_client(served: ServedMaster, name: str, failover: float, framework_id: str | None = None,
                      task_id: str | None = None) -> tuple[MesosClient, dict[str, Any], threading.Thread]:
    """A mesoshttp scheduler that launches ``task_id`` on its first offer (none: launches nothing)."""
    client = MesosClient(mesos_urls=[served.mesos_url], frameworkId=framework_id, frameworkName=name,
                         frameworkUser="nobody")
    client.requests_auth = HTTPBasicAuth(name, ServedMaster.SECRET)
    client.set_failover_timeout(failover)
    seen: dict[str, Any] = {"updates": [], "driver": None, "launched": False}

    def on_subscribed(driver: Any) -> None:
        seen["driver"] = driver

    def on_offers(offers: list) -> None:
        for offer in offers:
            if task_id and not seen["launched"]:
                seen["launched"] = True
                offer.accept([{"name": task_id, "task_id": {"value": task_id},
                               "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.1}}],
                               "command": {"value": "sleep 600"}}])
            else:
                offer.decline({"filters": {"refuse_seconds": 60}})

    client.on(MesosClient.SUBSCRIBED, on_subscribed)
    client.on(MesosClient.OFFERS, on_offers)
    client.on(MesosClient.UPDATE, lambda update: seen["updates"].append(update["status"]))
    thread = threading.Thread(target=client.register, daemon=True)
    thread.start()
    return client, seen, thread


def test_mesoshttp_failover_within_the_timeout_finds_its_task_and_past_it_loses_it(served):
    first, seen, thread = _launching_client(served, "phoenix", failover=30, task_id="ph-1")
    wait_until(lambda: any(s["state"] == "TASK_RUNNING" for s in seen["updates"]), 15, message="ph-1 running")
    framework_id = first.frameworkId
    first.disconnect_framework()            # the scheduler dies without TEARDOWN
    thread.join(20)
    wait_until(lambda: not served.master.frameworks.frameworks[framework_id].connected, 10, message="disconnected")
    again, seen_again, thread_again = _launching_client(served, "phoenix", failover=30, framework_id=framework_id)
    try:
        wait_until(lambda: seen_again["driver"] is not None, 15, message="re-subscribed with its id")
        assert again.frameworkId == framework_id
        seen_again["driver"].reconcile([{"task_id": {"value": "ph-1"}}])
        wait_until(lambda: any(s["task_id"]["value"] == "ph-1" and s["state"] == "TASK_RUNNING"
                               for s in seen_again["updates"]), 15, message="ph-1 still running after failover")
    finally:
        again.disconnect_framework()
        thread_again.join(20)
    # This one stays away longer than its 1 s failover timeout: its task is killed, it is gone.
    brief, seen_brief, thread_brief = _launching_client(served, "mayfly", failover=1, task_id="mf-1")
    wait_until(lambda: any(s["state"] == "TASK_RUNNING" for s in seen_brief["updates"]), 15, message="mf-1 running")
    mayfly = brief.frameworkId
    brief.disconnect_framework()
    thread_brief.join(20)
    wait_until(lambda: mayfly not in served.master.frameworks.frameworks and "mf-1" in served.fake.kills, 15,
               message="past its failover timeout the framework is removed and its task killed")
    assert framework_id in served.master.frameworks.frameworks, "phoenix is still within its 30 s"
