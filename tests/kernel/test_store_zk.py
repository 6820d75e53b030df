"""The ZooKeeper state store against a real three-server ensemble: every kind round-trips and
reloads, a new writer fences the old one (compare-and-set on the epoch), and below quorum
writes are refused at once with ``StoreUnavailable`` while reads keep answering; when quorum
returns, writes work again and nothing is lost."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from control.state import KINDS, StoreUnavailable
from control.store_zk import ZkStore, key_node, node_key
from tests.kernel.zk_ensemble import Ensemble
from tests.waiting import wait_until


@pytest.fixture
def ensemble(netns, tmp_path) -> Iterator[Ensemble]:
    zk = Ensemble(netns, tmp_path)
    try:
        for server_id in (1, 2, 3):
            zk.start(server_id)
        zk.wait_quorum()
        yield zk
    finally:
        zk.stop()


def test_keys_become_znode_names_and_back() -> None:
    for key in ("/shop/web", "marathon:/web", "backoff:/a.b", ".", "..", "", "%2F", "a b"):
        name = key_node(key)
        assert "/" not in name and name not in ("", ".", "..")
        assert node_key(name) == key


def test_store_round_trip_fencing_and_quorum_loss(ensemble: Ensemble) -> None:
    first_client = ensemble.client()
    lost: list[str] = []
    store = ZkStore(first_client, "/mesos", on_lost=lost.append)
    with pytest.raises(StoreUnavailable, match="not the leader"):
        store.put("apps", "/web", {"id": "/web"})
    store.claim()
    for kind in KINDS:
        store.put(kind, f"/{kind}/one", {"kind": kind, "n": 1})
    store.put("vips", "marathon:/web", "11.0.0.1")
    store.put("apps", "/web", {"id": "/web", "instances": 2})
    store.put("apps", "/web", {"id": "/web", "instances": 3})      # a set with the known version
    store.put("meta", "", 7)
    store.delete("tasks", "/tasks/one")
    store.delete("tasks", "never-there")                            # idempotent
    with pytest.raises(ValueError, match="unknown state kind"):
        store.put("nonsense", "k", 1)  # type: ignore[arg-type]

    # A second master takes over: it reads everything back, and the first can no longer write.
    second_client = ensemble.client()
    try:
        successor = ZkStore(second_client, "/mesos")
        successor.claim()
        assert successor.get("apps", "/web") == {"id": "/web", "instances": 3}
        assert successor.get("vips", "marathon:/web") == "11.0.0.1"
        assert successor.get("meta", "") == 7
        assert successor.get("tasks", "/tasks/one") is None
        assert [k for k, _ in successor.items("users")] == ["/users/one"]
        with pytest.raises(StoreUnavailable, match="refused"):
            store.put("apps", "/web", {"id": "/web", "instances": 9})
        assert lost and "taken over" in lost[0]
        with pytest.raises(StoreUnavailable, match="taken over"):
            store.put("apps", "/other", {"id": "/other"})
        assert second_client.get("/mesos/state/apps/" + key_node("/web"))[0] == b'{"id":"/web","instances":3}'
        successor.put("apps", "/web", {"id": "/web", "instances": 4})

        # Group commit (one write request): staged writes are read back at once and reach
        # ZooKeeper in one transaction, only at flush.
        transactions = successor.writes
        successor.begin()
        successor.put("apps", "/grouped", {"id": "/grouped"})
        successor.put("vips", "marathon:/grouped", "11.0.0.2")
        successor.delete("vips", "marathon:/web")
        assert successor.get("apps", "/grouped") == {"id": "/grouped"}
        assert dict(successor.items("vips")) == {"marathon:/grouped": "11.0.0.2", "/vips/one": {"kind": "vips", "n": 1}}
        assert not second_client.exists("/mesos/state/apps/" + key_node("/grouped"))
        successor.flush()
        successor.end()
        assert successor.writes == transactions + 1
        assert second_client.exists("/mesos/state/apps/" + key_node("/grouped"))
        assert not second_client.exists("/mesos/state/vips/" + key_node("marathon:/web"))
        successor.delete("apps", "/grouped")

        # Quorum lost: writes are refused at once, reads keep answering from memory.
        ensemble.kill(1)
        ensemble.kill(2)

        def refused() -> bool:
            started = time.monotonic()
            try:
                successor.put("apps", "/quorum", {"id": "/quorum"})
            except StoreUnavailable as exc:
                assert time.monotonic() - started < successor.write_timeout + 1
                return "no quorum" in str(exc) or "ZooKeeper" in str(exc)
            return False

        wait_until(refused, timeout=30, message="writes refused without quorum")
        assert successor.get("apps", "/web") == {"id": "/web", "instances": 4}
        assert len(list(successor.items("apps"))) == 2
        successor.begin()
        with pytest.raises(StoreUnavailable):
            successor.put("apps", "/staged", {"id": "/staged"})
        successor.end()

        ensemble.start(1)
        ensemble.start(2)
        ensemble.wait_quorum()

        # A write cut off mid-commit (outcome unknown) makes the writer hand over once ZooKeeper
        # answers again (the master reloads); clean refusals leave it writing.
        wait_until(lambda: successor.writable is None or successor.lost is not None, timeout=60,
                   message="the store writable again, or handed over")
        if successor.lost is not None:
            assert "outcome was unknown" in successor.lost
            successor = ZkStore(second_client, "/mesos")
            successor.claim()

        def written() -> bool:
            nonlocal successor
            if successor.lost is not None:      # kazoo tells its listeners just after the state changes
                assert "outcome was unknown" in successor.lost
                successor = ZkStore(second_client, "/mesos")
                successor.claim()
            try:
                successor.put("apps", "/after", {"id": "/after"})
            except StoreUnavailable as exc:
                raise AssertionError(f"refused: {exc}") from exc
            return True

        wait_until(written, timeout=60, message="writes accepted again once quorum is back")
        # A refused write whose request was already sent may have committed (its outcome was
        # unknown): the key is read back before its next write, which then applies cleanly.
        successor.put("apps", "/quorum", {"id": "/quorum", "n": 2})
        reader = ZkStore(first_client, "/mesos")
        reader._load()
        assert dict(reader.items("apps")) == {"/after": {"id": "/after"}, "/apps/one": {"kind": "apps", "n": 1},
                                              "/quorum": {"id": "/quorum", "n": 2},
                                              "/web": {"id": "/web", "instances": 4}}
        assert dict(reader.items("apps")) == dict(successor.items("apps"))
    finally:
        second_client.stop()
        second_client.close()
        first_client.stop()
        first_client.close()
