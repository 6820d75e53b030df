"""The state store seam: SQLite (on disk and in memory) and the in-memory fake keep one contract,
and a master restarted on the same store finds its apps, tasks and VIP addresses again."""

import pytest

from control.agent_client import FakeAgents
from control.state import KINDS
from control.state_memory import MemoryStore
from control.store import SqliteStore
from tests.unit.master_harness import Cluster, registration


@pytest.fixture(params=["sqlite-file", "sqlite-memory", "memory"])
def store(request, tmp_path):
    made = {"sqlite-file": lambda: SqliteStore(tmp_path), "sqlite-memory": lambda: SqliteStore(None),
            "memory": MemoryStore}[request.param]()
    yield made
    made.close()


def test_put_get_items_delete_round_trip_json(store):
    store.put("apps", "/b", {"id": "/b", "instances": 2, "labels": {"VIP_0": "/b:80"}})
    store.put("apps", "/a", {"id": "/a"})
    store.put("apps", "/a", {"id": "/a", "instances": 3})         # upsert
    assert store.get("apps", "/a") == {"id": "/a", "instances": 3}
    assert [key for key, _ in store.items("apps")] == ["/a", "/b"]
    assert store.get("apps", "/missing", "default") == "default"
    for key, _ in store.items("apps"):                              # deleting while iterating
        store.delete("apps", key)
    store.delete("apps", "/a")                                      # idempotent
    assert list(store.items("apps")) == [] and list(store.items("tasks")) == []


def test_kinds_are_separate_and_unknown_kinds_are_refused(store):
    for kind in KINDS:
        store.put(kind, "k", kind)
    assert [store.get(kind, "k") for kind in KINDS] == list(KINDS)
    with pytest.raises(ValueError, match="unknown state kind 'nope'"):
        store.put("nope", "k", 1)
    with pytest.raises(ValueError, match="known: apps"):
        list(store.items("nope"))


def test_values_come_back_as_copies(store):
    value = {"list": [1, 2]}
    store.put("meta", "x", value)
    value["list"].append(3)
    got = store.get("meta", "x")
    got["list"].append(4)
    assert store.get("meta", "x") == {"list": [1, 2]}


async def test_master_on_a_memory_store_restarts_with_its_state():
    store, fake = MemoryStore(), FakeAgents()
    first = Cluster(fake=fake, store=store)
    await first.register(1)
    app = {"id": "/web", "cmd": "sleep 100", "cpus": 0.1, "mem": 16,
           "portDefinitions": [{"port": 0, "labels": {"VIP_0": "/web:80"}}]}
    assert (await first.post_app(app)).status_code == 201
    tasks = {t.task_id for t in first.running("/web")}
    vips = dict(first.master.vips.allocations)
    await first.close()

    second = Cluster(fake=fake, store=store)
    try:
        await second.mesos.post("/v1/agents", json=registration(1))
        await second.settle()
        assert {t.task_id for t in second.running("/web")} == tasks
        assert second.master.vips.allocations == vips and vips
        assert second.master.master_id == first.master.master_id
    finally:
        await second.close()

