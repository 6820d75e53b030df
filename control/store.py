"""``SqliteStore``: the state store seam (``control.state``) as JSON rows in one SQLite file.

One table ``state (kind, key, value)``. Writes are committed at once (WAL, ``synchronous=NORMAL``),
so a master killed at any point restarts from what it last decided. Without a directory the
database lives in memory (tests, a master without ``--state-dir``).

A disk that refuses writes (the directory mounted read-only, ``database or disk is full``, an I/O
error, a lock held past the busy timeout) makes writes raise ``StoreUnavailable`` with the
reason; the transaction is rolled back, so the file keeps what it had. ``writable`` says why
writes are refused before a request changes anything (``control.http.ha.StoreGuard`` answers
503). The directory's read-only flag is read with ``statvfs``: SQLite keeps its files open,
and a file opened before the directory was remounted read-only stays writable to the kernel.

A write request's changes are staged (``begin``) and committed as one transaction before its
answer leaves (``flush``), as ``ZkStore`` does. A commit refused after the master applied the
change in memory leaves memory ahead of the file: the store then refuses every write until the
disk takes one again, and tells ``on_lost`` so the master reloads what the file holds.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from control.state import Kind, StoreUnavailable, check_kind

log = logging.getLogger("navstar.store")

BUSY_TIMEOUT = 5.0          # seconds a write waits for another process's lock
PROBE_INTERVAL = 1.0        # seconds between tries of a disk that refused a write


class SqliteStore:
    def __init__(self, state_dir: str | Path | None, on_lost: Callable[[str], None] | None = None,
                 busy_timeout: float = BUSY_TIMEOUT) -> None:
        self.directory: Path | None = None
        if state_dir is None:
            self.path = ":memory:"
        else:
            self.directory = Path(state_dir)
            self.directory.mkdir(parents=True, exist_ok=True)
            self.path = str(self.directory / "master.sqlite")
        self.on_lost = on_lost or (lambda _why: None)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=busy_timeout)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS state (kind TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,"
            " PRIMARY KEY (kind, key))"
        )
        self._lock = threading.Lock()       # one transaction at a time (flush runs on a worker thread)
        self._staging = 0                                       # write requests in flight
        self._staged: dict[tuple[str, str], str | None] = {}    # (kind, key) → JSON, None: delete
        self._inflight: list[dict[tuple[str, str], str | None]] = []   # being committed by flush
        self.diverged: str | None = None    # a refused commit the master had already applied
        self._probed_at = 0.0
        self.refused = 0                    # commits the disk refused

    # ---- the seam ----------------------------------------------------------------------
    def put(self, kind: Kind, key: str, value: Any) -> None:
        check_kind(kind)
        self._write(kind, key, json.dumps(value, separators=(",", ":")))

    def delete(self, kind: Kind, key: str) -> None:
        check_kind(kind)
        self._write(kind, key, None)

    def get(self, kind: Kind, key: str, default: Any = None) -> Any:
        check_kind(kind)
        for pending in (self._staged, *reversed(self._inflight)):
            if (kind, key) in pending:
                text = pending[(kind, key)]
                return json.loads(text) if text is not None else copy.deepcopy(default)
        row = self._db.execute("SELECT value FROM state WHERE kind = ? AND key = ?", (kind, key)).fetchone()
        return json.loads(row[0]) if row else default

    def items(self, kind: Kind) -> Iterator[tuple[str, Any]]:
        check_kind(kind)
        rows = self._db.execute("SELECT key, value FROM state WHERE kind = ? ORDER BY key", (kind,)).fetchall()
        texts: dict[str, str] = dict(rows)
        pending = [item for writes in (*self._inflight, self._staged) for item in list(writes.items())]
        for (staged_kind, key), text in pending:
            if staged_kind == kind:
                if text is None:
                    texts.pop(key, None)
                else:
                    texts[key] = text
        for key, text in sorted(texts.items()):
            yield key, json.loads(text)

    def close(self) -> None:
        self._db.close()

    # ---- group commit (control.http.ha.StoreGuard) ---------------------------------------
    def begin(self) -> None:
        """A request that writes has started: writes are staged until ``flush``."""
        self._staging += 1

    def end(self) -> None:
        """The request is answered; staging stops with the last one."""
        self._staging = max(0, self._staging - 1)
        if self._staging == 0 and self._staged:
            self.flush()

    def flush(self) -> None:
        """Commits everything staged in one transaction; raises ``StoreUnavailable`` (nothing of
        it is in the file then). Reads see the staged values until it returns."""
        staged, self._staged = self._staged, {}
        if not staged:
            return
        self._inflight.append(staged)
        try:
            self._commit(staged)
        finally:
            self._inflight.remove(staged)

    def _write(self, kind: str, key: str, text: str | None) -> None:
        if self._staging:
            why = self.writable
            if why is not None:
                raise StoreUnavailable(why)
            self._staged[(kind, key)] = text
            return
        self._commit({(kind, key): text})

    # ---- writing -----------------------------------------------------------------------
    @property
    def writable(self) -> str | None:
        """Why a write would be refused now, or None."""
        if self.directory is not None:
            try:
                read_only = os.statvfs(self.directory).f_flag & os.ST_RDONLY
            except OSError as exc:
                return f"the state directory {self.directory} cannot be read: {exc.strerror}"
            if read_only:
                return f"the state directory {self.directory} is read-only"
        if self.diverged is not None:
            self._probe()
            return self.diverged
        return None

    def _commit(self, writes: dict[tuple[str, str], str | None]) -> None:
        with self._lock:
            why = self.writable
            if why is not None:
                raise StoreUnavailable(why)
            try:
                self._db.execute("BEGIN IMMEDIATE")
                for (kind, key), text in writes.items():
                    if text is None:
                        self._db.execute("DELETE FROM state WHERE kind = ? AND key = ?", (kind, key))
                    else:
                        self._db.execute("INSERT INTO state (kind, key, value) VALUES (?, ?, ?)"
                                         " ON CONFLICT (kind, key) DO UPDATE SET value = excluded.value",
                                         (kind, key, text))
                self._db.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                self._rollback()
                self.refused += 1
                why = f"the state store refused the write: {exc}"
                # The caller has applied the change in memory already: memory is ahead of the file.
                self.diverged = why
                self._probed_at = time.monotonic()
                log.error("state store: %s; writes are refused until the disk takes one again", why)
                raise StoreUnavailable(why) from exc

    def _rollback(self) -> None:
        if self._db.in_transaction:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.OperationalError:
                pass        # SQLite rolled it back itself (a failed COMMIT may do so)

    def _probe(self) -> None:
        """After a refused commit: at most once a second, a write that changes nothing (a row
        added and removed in one transaction); once the disk takes it, ``on_lost`` is told."""
        now = time.monotonic()
        if now - self._probed_at < PROBE_INTERVAL or not self._lock.acquire(blocking=False):
            return
        self._probed_at = now
        try:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("INSERT OR REPLACE INTO state (kind, key, value) VALUES ('meta', 'write_probe', '0')")
            self._db.execute("DELETE FROM state WHERE kind = 'meta' AND key = 'write_probe'")
            self._db.execute("COMMIT")
        except sqlite3.OperationalError:
            self._rollback()
            return
        finally:
            self._lock.release()
        why = self.diverged or ""
        log.error("state store: the disk takes writes again; reloading what it holds (%s)", why)
        self.on_lost(f"{why}; the disk takes writes again")
