"""The state store seam: SQLite (on disk and in memory) and the in-memory fake keep one contract,
and a master restarted on the same store finds its apps, tasks and VIP addresses again."""

import contextlib
import os
import sqlite3

import pytest

from control.agent_client import FakeAgents
from control.state import KINDS, StoreUnavailable
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



# ---- a disk that refuses writes (a real SQLite file; a lock held by another connection) -------

def _held(tmp_path) -> sqlite3.Connection:
    """Another process's connection holding the write lock (as a stuck backup would)."""
    other = sqlite3.connect(tmp_path / "master.sqlite", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    return other


def _rows(tmp_path) -> dict[tuple[str, str], str]:
    with contextlib.closing(sqlite3.connect(tmp_path / "master.sqlite")) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        return {(kind, key): value for kind, key, value in db.execute("SELECT kind, key, value FROM state")}


def test_a_refused_write_raises_store_unavailable_with_the_reason_and_leaves_the_file_as_it_was(tmp_path):
    lost: list[str] = []
    store = SqliteStore(tmp_path, on_lost=lost.append, busy_timeout=0.05)
    try:
        store.put("apps", "/a", {"id": "/a"})
        assert store.writable is None
        before = _rows(tmp_path)
        other = _held(tmp_path)
        store.begin()                      # one request's writes: staged, committed together
        store.put("apps", "/b", {"id": "/b"})
        store.delete("apps", "/a")
        assert store.get("apps", "/b") == {"id": "/b"} and store.get("apps", "/a") is None
        with pytest.raises(StoreUnavailable, match="refused the write: database is locked"):
            store.flush()
        store.end()
        other.execute("ROLLBACK")
        other.close()
        assert _rows(tmp_path) == before                        # neither write is in the file
        assert [key for key, _ in store.items("apps")] == ["/a"]
        # Memory (the master's) may hold the change: writes are refused until the disk takes one,
        # then the master is told to reload.
        assert "database is locked" in (store.writable or "") and lost == []
        with pytest.raises(StoreUnavailable, match="database is locked"):
            store.put("apps", "/c", {"id": "/c"})
        store._probed_at = 0.0              # the next check probes at once (not a second later)
        assert store.writable is not None and len(lost) == 1 and "takes writes again" in lost[0]
        assert _rows(tmp_path) == before                        # the probe changed nothing
        store._probed_at = 0.0
        assert store.writable is not None and len(lost) == 1    # told once
    finally:
        store.close()


def test_a_read_only_state_directory_is_refused_before_any_write(tmp_path, monkeypatch):
    store = SqliteStore(tmp_path)
    try:
        store.put("apps", "/a", {"id": "/a"})
        real = os.statvfs

        def read_only(path):
            result = real(path)
            return os.statvfs_result((*result[:8], result.f_flag | os.ST_RDONLY, result.f_namemax))

        monkeypatch.setattr(os, "statvfs", read_only)
        assert store.writable == f"the state directory {tmp_path} is read-only"    # asked up front
        assert store.get("apps", "/a") == {"id": "/a"}                              # reads are served
        monkeypatch.setattr(os, "statvfs", real)
        store.put("apps", "/b", {"id": "/b"})                   # writable again: no reload needed
        assert [key for key, _ in store.items("apps")] == ["/a", "/b"] and store.diverged is None
        monkeypatch.setattr(os, "statvfs", read_only)
        with pytest.raises(StoreUnavailable, match="is read-only"):
            store.put("apps", "/c", {"id": "/c"})               # tried anyway: memory may be ahead
        assert store.diverged is not None and "is read-only" in store.diverged
    finally:
        store.close()


async def test_a_post_whose_commit_is_refused_answers_503_and_a_reload_finds_the_state_before_it(tmp_path):
    lost: list[str] = []
    store = SqliteStore(tmp_path, on_lost=lost.append, busy_timeout=0.05)
    fake = FakeAgents()
    first = Cluster(fake=fake, store=store)
    app = {"id": "/web", "cmd": "sleep 100", "cpus": 0.1, "mem": 16, "instances": 2,
           "portDefinitions": [{"port": 0, "labels": {"VIP_0": "/web:80"}}]}
    try:
        await first.register(1)
        assert (await first.post_app(app)).status_code == 201
        await first.settle()
        tasks = {t.task_id for t in first.running("/web")}
        other = _held(tmp_path)
        refused = await first.marathon.post("/v2/apps", json={**app, "id": "/other"})
        assert refused.status_code == 503, refused.text
        assert "database is locked" in refused.json()["reason"] and refused.json()["message"].startswith(
            "the master cannot change its state now")
        # Reads keep answering; further writes are refused before anything changes.
        assert (await first.marathon.get("/v2/apps")).status_code == 200
        assert (await first.marathon.get("/v2/tasks")).status_code == 200
        assert (await first.mesos.get("/master/state")).status_code == 200
        again = await first.marathon.put("/v2/apps/web", json={"instances": 3})
        assert again.status_code == 503 and first.master.scheduler.apps["/web"].instances == 2
        other.execute("ROLLBACK")
        other.close()
        store._probed_at = 0.0
        assert store.writable is not None and len(lost) == 1
    finally:
        await first.close()
    # What the composition root does on on_lost: a master started again on the same file.
    second = Cluster(fake=fake, store=SqliteStore(tmp_path))
    try:
        await second.mesos.post("/v1/agents", json=registration(1))
        await second.settle()
        assert sorted(second.master.scheduler.apps) == ["/web"]
        assert {t.task_id for t in second.running("/web")} == tasks
        assert (await second.marathon.post("/v2/apps", json={**app, "id": "/other"})).status_code == 201
    finally:
        await second.close()
