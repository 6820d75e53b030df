"""The SQLite state store on a disk that refuses writes (root: mounts over the test's own temp
directory only). A read-only bind mount over the state directory is refused before any write
(SQLite keeps its files open, and those stay writable to the kernel, so the store reads the
directory's flag); a full filesystem refuses the commit itself. Either way reads keep answering,
the file keeps what it had (``PRAGMA integrity_check`` ok) and writes work again with no restart
once the disk takes them."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from control.state import StoreUnavailable
from control.store import SqliteStore
from tests.mounts import read_only
from tests.waiting import wait_until


def _mount(*argv: str) -> None:
    subprocess.run(["mount", *argv], check=True, capture_output=True, timeout=10)


@contextlib.contextmanager
def small_tmpfs(directory: Path, size: str) -> Iterator[None]:
    directory.mkdir()
    _mount("-t", "tmpfs", "-o", f"size={size}", "navstar-test", str(directory))
    try:
        yield
    finally:
        subprocess.run(["umount", str(directory)], check=True, capture_output=True, timeout=10)


def rows(directory: Path) -> dict[tuple[str, str], str]:
    with contextlib.closing(sqlite3.connect(directory / "master.sqlite")) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        return {(kind, key): value for kind, key, value in db.execute("SELECT kind, key, value FROM state")}


def test_a_read_only_state_directory_refuses_writes_serves_reads_and_recovers(tmp_path: Path) -> None:
    state = tmp_path / "state"
    lost: list[str] = []
    store = SqliteStore(state, on_lost=lost.append)
    try:
        for n in range(20):
            store.put("apps", f"/app-{n}", {"id": f"/app-{n}", "instances": n})
        before = rows(state)
        with read_only(state):
            with pytest.raises(OSError) as denied:              # the mount is real
                (state / "probe").write_text("x")
            assert denied.value.errno == 30                     # EROFS
            # What StoreGuard asks before letting a write request in: refused up front.
            assert store.writable == f"the state directory {state} is read-only"
            assert store.get("apps", "/app-1") == {"id": "/app-1", "instances": 1}
            assert len(list(store.items("apps"))) == 20
        assert rows(state) == before and store.writable is None
        store.put("apps", "/new", {"id": "/new"})              # writable again, same store, no reload
        assert store.get("apps", "/new") == {"id": "/new"} and lost == []

        # A write tried while read-only (a request let in just before, a background write): its
        # caller's memory is ahead of the file, so once writable the master is told to reload.
        with read_only(state):
            store.begin()
            with pytest.raises(StoreUnavailable, match="is read-only"):
                store.delete("apps", "/app-1")
            store.end()
            with pytest.raises(StoreUnavailable, match="is read-only"):
                store.put("apps", "/newer", {"id": "/newer"})
            assert lost == []
        store._probed_at = 0.0
        assert "refused after the master applied it" in (store.writable or "") and len(lost) == 1
    finally:
        store.close()
    with read_only(state), pytest.raises(StoreUnavailable, match="cannot open the state store .* is read-only"):
        SqliteStore(state)                                      # a master cannot start on it: it says why
    reopened = SqliteStore(state)
    try:
        assert len(list(reopened.items("apps"))) == 21
    finally:
        reopened.close()


def test_a_full_disk_refuses_the_commit_and_the_file_keeps_what_it_had(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with small_tmpfs(state, "2m"):
        lost: list[str] = []
        store = SqliteStore(state, on_lost=lost.append)
        try:
            for n in range(20):
                store.put("apps", f"/app-{n}", {"id": f"/app-{n}"})
            before = rows(state)
            filler = state / "filler"
            with open(filler, "wb") as out, contextlib.suppress(OSError):
                while True:
                    out.write(b"\0" * 65536)
                    out.flush()
            big = {"id": "/big", "cmd": "x" * 512 * 1024}      # more than the WAL holds: it must grow
            with pytest.raises(StoreUnavailable, match="database or disk is full"):
                store.put("apps", "/big", big)
            assert rows(state) == before
            assert "disk is full" in (store.writable or "") and lost == []
            assert store.get("apps", "/app-3") == {"id": "/app-3"}    # reads are served
            filler.unlink()
            store._probed_at = 0.0
            assert store.writable is not None and len(lost) == 1     # the master reloads now
        finally:
            store.close()
        reopened = SqliteStore(state)
        try:
            assert reopened.writable is None
            reopened.put("apps", "/big", big)
            assert len(list(reopened.items("apps"))) == 21
        finally:
            reopened.close()
        os.sync()
        assert len(rows(state)) == 21


def test_a_master_whose_commit_the_disk_refuses_answers_503_then_reloads_the_file(netns, tmp_path: Path) -> None:
    """A real ``navstar master`` on a small tmpfs: a POST whose commit meets a full disk is a 503
    naming it; the master then refuses writes, and once the disk has room it starts itself
    again (same pid) from the file: the refused app is not there, the ones before are."""
    state, secret = tmp_path / "state", tmp_path / "secret"
    secret.write_text("s3cret")
    headers = ["-H", "Authorization: token=s3cret", "-H", "Content-Type: application/json"]

    def call(method: str, path: str, body: dict | None = None) -> tuple[int, str]:
        data: list[str] = []
        if body is not None:
            (tmp_path / "body.json").write_text(json.dumps(body))
            data = ["-d", f"@{tmp_path / 'body.json'}"]
        out = netns.run("curl", "-s", "-m", "10", "-X", method, "-w", "\n%{http_code}", *headers, *data,
                        f"http://127.0.0.1:8088{path}", check=False).stdout
        text, _, status = out.rpartition("\n")
        return int(status or 0), text

    def app(app_id: str, size: int = 0) -> dict:
        return {"id": app_id, "cmd": "sleep 1000", "cpus": 0.1, "mem": 16, "instances": 0,
                "labels": {"padding": "x" * size}}

    def app_ids() -> list[str] | None:
        status, text = call("GET", "/v2/apps")
        return sorted(a["id"] for a in json.loads(text)["apps"]) if status == 200 else None

    with small_tmpfs(state, "3m"), open(tmp_path / "master.log", "wb") as log:
        master = netns.popen(sys.executable, "-m", "navstar", "master", "--marathon-listen", "127.0.0.1:8088",
                             "--mesos-listen", "127.0.0.1:5050", "--state-dir", str(state),
                             "--token-file", str(secret), "--adminrouter-listen", "127.0.0.1:8101",
                             stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: app_ids() == [], timeout=30, message="the master answering")
            assert call("POST", "/v2/apps", app("/before"))[0] == 201
            filler = state / "filler"
            with open(filler, "wb") as out, contextlib.suppress(OSError):
                while True:
                    out.write(b"\0" * 65536)
                    out.flush()
            status, text = call("POST", "/v2/apps", app("/big", 1_000_000))
            assert status == 503 and "database or disk is full" in json.loads(text)["reason"], text
            status, text = call("POST", "/v2/apps", app("/small"))
            assert status == 503 and "database or disk is full" in json.loads(text)["reason"], text
            assert call("GET", "/v2/tasks")[0] == 200                       # reads are served
            filler.unlink()
            wait_until(lambda: b"restarting the master" in (tmp_path / "master.log").read_bytes(), timeout=30,
                       message="the master starting again once the disk has room")
            wait_until(lambda: app_ids() == ["/before"], timeout=30, message="the file's apps only")
            assert master.poll() is None                                    # the same process, re-executed
            assert call("POST", "/v2/apps", app("/after"))[0] == 201
            assert app_ids() == ["/after", "/before"]
        finally:
            master.send_signal(signal.SIGKILL)
            master.wait(timeout=10)
        with contextlib.closing(sqlite3.connect(state / "master.sqlite")) as db:
            assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            assert {k for (k,) in db.execute("SELECT key FROM state WHERE kind = 'apps'")} == {"/after", "/before"}
