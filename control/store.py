"""The master's persistence: every piece of state as JSON rows in one SQLite file.

Tables are ``kind → (key → JSON)``: ``apps``, ``tasks``, ``agents``, ``deployments``, ``vips``,
``service_ports`` and ``meta`` (the view version, the master id). Writes are write-through and
committed at once (WAL), so a master killed at any point restarts from what it last decided.
``Store(None)`` keeps everything in memory (tests, a master without ``--state-dir``).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

KINDS = ("apps", "tasks", "agents", "deployments", "vips", "service_ports", "meta", "allocations")


class Store:
    def __init__(self, state_dir: str | Path | None) -> None:
        if state_dir is None:
            self.path = ":memory:"
        else:
            directory = Path(state_dir)
            directory.mkdir(parents=True, exist_ok=True)
            self.path = str(directory / "master.sqlite")
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS state (kind TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,"
            " PRIMARY KEY (kind, key))"
        )

    def put(self, kind: str, key: str, value: Any) -> None:
        """Idempotent upsert."""
        self._check(kind)
        self._db.execute("INSERT INTO state (kind, key, value) VALUES (?, ?, ?)"
                         " ON CONFLICT (kind, key) DO UPDATE SET value = excluded.value",
                         (kind, key, json.dumps(value, separators=(",", ":"))))

    def delete(self, kind: str, key: str) -> None:
        """Idempotent: deleting what is not there does nothing."""
        self._check(kind)
        self._db.execute("DELETE FROM state WHERE kind = ? AND key = ?", (kind, key))

    def get(self, kind: str, key: str, default: Any = None) -> Any:
        self._check(kind)
        row = self._db.execute("SELECT value FROM state WHERE kind = ? AND key = ?", (kind, key)).fetchone()
        return json.loads(row[0]) if row else default

    def items(self, kind: str) -> Iterator[tuple[str, Any]]:
        self._check(kind)
        for key, value in self._db.execute("SELECT key, value FROM state WHERE kind = ? ORDER BY key", (kind,)):
            yield key, json.loads(value)

    def close(self) -> None:
        self._db.close()

    @staticmethod
    def _check(kind: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown state kind {kind!r}; known: {', '.join(KINDS)}")
