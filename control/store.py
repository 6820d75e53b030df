"""``SqliteStore``: the state store seam (``control.state``) as JSON rows in one SQLite file.

One table ``state (kind, key, value)``. Writes are committed at once (WAL, ``synchronous=NORMAL``),
so a master killed at any point restarts from what it last decided. Without a directory the
database lives in memory (tests, a master without ``--state-dir``).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from control.state import Kind, check_kind


class SqliteStore:
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

    def put(self, kind: Kind, key: str, value: Any) -> None:
        check_kind(kind)
        self._db.execute("INSERT INTO state (kind, key, value) VALUES (?, ?, ?)"
                         " ON CONFLICT (kind, key) DO UPDATE SET value = excluded.value",
                         (kind, key, json.dumps(value, separators=(",", ":"))))

    def delete(self, kind: Kind, key: str) -> None:
        check_kind(kind)
        self._db.execute("DELETE FROM state WHERE kind = ? AND key = ?", (kind, key))

    def get(self, kind: Kind, key: str, default: Any = None) -> Any:
        check_kind(kind)
        row = self._db.execute("SELECT value FROM state WHERE kind = ? AND key = ?", (kind, key)).fetchone()
        return json.loads(row[0]) if row else default

    def items(self, kind: Kind) -> Iterator[tuple[str, Any]]:
        check_kind(kind)
        rows = self._db.execute("SELECT key, value FROM state WHERE kind = ? ORDER BY key", (kind,)).fetchall()
        for key, value in rows:
            yield key, json.loads(value)

    def close(self) -> None:
        self._db.close()
