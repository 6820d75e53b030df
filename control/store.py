"""``SqliteStore``: the state store seam (``control.state``) as JSON rows in one SQLite file.

One table ``state (kind, key, value)``. Writes are committed before the call (or the write
request) returns (WAL, ``synchronous=NORMAL``), so a master killed at any point restarts from
what it last decided. Without a directory the
database lives in memory (tests, a master without ``--state-dir``).

A disk that refuses writes (the directory mounted read-only, ``database or disk is full``, an I/O
error, a lock held past the busy timeout) makes writes raise ``StoreUnavailable`` with the
reason; the transaction is rolled back, so the file keeps what it had. ``writable`` says why
writes are refused before a request changes anything (``control.http.ha.StoreGuard`` answers
503). The directory's read-only flag is read with ``statvfs``: SQLite keeps its files open,
and a file opened before the directory was remounted read-only stays writable to the kernel.

A write request's changes are staged and committed as one transaction before its answer leaves
(``control.staging``, as ``ZkStore``). A write refused after the master applied the change in
memory (a commit the disk refused, or any write tried while the store refuses: the directory
turned read-only after the request was let in, a background write) leaves memory ahead of the
file: the store then refuses every write until the disk takes one again, and tells ``on_lost``
so the master reloads what the file holds. Requests refused up front change nothing, so those
need no reload.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from control.staging import StagedWrites, Writes
from control.state import StoreUnavailable

log = logging.getLogger("navstar.store")

BUSY_TIMEOUT = 5.0          # seconds a write waits for another process's lock
PROBE_INTERVAL = 1.0        # seconds between tries of a disk that refused a write


class SqliteStore(StagedWrites):
    def __init__(self, state_dir: str | Path | None, on_lost: Callable[[str], None] | None = None,
                 busy_timeout: float = BUSY_TIMEOUT) -> None:
        super().__init__()
        self.directory: Path | None = None
        if state_dir is None:
            self.path = ":memory:"
        else:
            self.directory = Path(state_dir)
            self.directory.mkdir(parents=True, exist_ok=True)
            self.path = str(self.directory / "master.sqlite")
        self.on_lost = on_lost or (lambda _why: None)
        self._lock = threading.Lock()       # one transaction at a time (flush runs on a worker thread)
        self.diverged: str | None = None    # a refused commit the master had already applied
        self._probed_at = 0.0
        self._told = False                  # on_lost was called
        self._busy_timeout_ms = int(busy_timeout * 1000)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=busy_timeout)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS state (kind TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,"
                " PRIMARY KEY (kind, key))"
            )
        except sqlite3.OperationalError as exc:
            self._db.close()
            refusal = self.writable
            raise StoreUnavailable(f"cannot open the state store {self.path}: {exc}"
                                   + (f" ({refusal})" if refusal else "")) from exc

    # ---- what is committed (control.staging gives the seam) -------------------------------
    def _committed(self, kind: str, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM state WHERE kind = ? AND key = ?", (kind, key)).fetchone()
        return row[0] if row else None

    def _committed_texts(self, kind: str) -> dict[str, str]:
        return dict(self._db.execute("SELECT key, value FROM state WHERE kind = ?", (kind,)).fetchall())

    def close(self) -> None:
        self._db.close()

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

    def _refused_midway(self, why: str) -> None:
        # The caller changed memory before this write: once the disk takes writes, reload.
        if self.diverged is None:
            self.diverged = f"a change was refused after the master applied it ({why})"
            self._probed_at = time.monotonic()
            log.error("state store: %s; the master reloads once the disk takes writes", self.diverged)

    def _commit_many(self, writes: Writes) -> None:
        with self._lock:
            why = self.writable
            if why is not None:
                self._refused_midway(why)
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
                why = f"the state store refused the write: {exc}"
                # The caller has applied the change in memory already: memory is ahead of the file.
                self._refused_midway(why)
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
        if self._told or now - self._probed_at < PROBE_INTERVAL or not self._lock.acquire(blocking=False):
            return
        self._probed_at = now
        try:
            # Probes may run on the event loop: a lock held elsewhere fails it at once, not in 5 s.
            self._db.execute("PRAGMA busy_timeout = 0")
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("INSERT OR REPLACE INTO state (kind, key, value) VALUES ('meta', 'write_probe', '0')")
            self._db.execute("DELETE FROM state WHERE kind = 'meta' AND key = 'write_probe'")
            self._db.execute("COMMIT")
        except sqlite3.OperationalError:
            self._rollback()
            return
        finally:
            self._db.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
            self._lock.release()
        self._told = True
        why = self.diverged or ""
        log.error("state store: the disk takes writes again; reloading what it holds (%s)", why)
        self.on_lost(f"{why}; the disk takes writes again")
