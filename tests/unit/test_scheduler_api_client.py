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
