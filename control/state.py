"""Seam: the master's state store — everything it must find again after a restart.

State is kept as JSON documents under ``(kind, key)``:

| kind | key | value |
|---|---|---|
| ``apps`` | app id | the app definition (Marathon JSON) |
| ``tasks`` | task id | the task record (live tasks only) |
| ``deployments`` | deployment id | the deployment |
| ``agents`` | agent id | the agent's registration |
| ``vips`` | ``marathon:/name`` | the named VIP's address |
| ``allocations`` | ``overlay`` | the overlay IPAM snapshot |
| ``groups`` | group id | a group's own fields (``dependencies``, ``version``); its apps are in ``apps`` |
| ``app_versions`` | ``<app id> <version>`` | the app's definition as stored at that version (``/v2/apps/{id}/versions``) |
| ``group_versions`` | ``<group id> <version>`` | the group as a change left it (its apps and subgroups, as a group body) |
| ``frameworks`` | framework id | a v1 scheduler framework: its ``FrameworkInfo``, when it registered and left |
| ``framework_tasks`` | task id | a framework's task record (live tasks only) |
| ``users`` | uid | ``{"uid", "description", "hash"}`` (an argon2id hash, never the password) |
| ``meta`` | ``master_id``, ``view_version``, ``vip_next_address``, ``backoff:<app id>`` | scalars, backoff |

Every write is durable when the call returns, so a master killed at any point restarts from what
it last decided. Implementations: ``control.store.SqliteStore`` (one SQLite file; in memory
without a directory) and ``control.state_memory.MemoryStore`` (a dict, for tests). A store shared
by several masters (ZooKeeper) raises ``StoreUnavailable`` from writes it cannot make durable or
may not make (quorum lost, leadership lost), and SQLite from writes its disk refuses (read-only,
full, I/O errors), so the caller can refuse the request. Such stores say why they refuse writes
before any is tried (``writable``, read through ``write_refusal``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal, Protocol, get_args

Kind = Literal["apps", "tasks", "deployments", "agents", "vips", "allocations", "users", "groups", "app_versions",
               "group_versions", "frameworks", "framework_tasks", "meta"]
KINDS: tuple[Kind, ...] = get_args(Kind)


class StoreUnavailable(Exception):
    """The store cannot take the write now; nothing was written."""


class StateStore(Protocol):
    """Values are JSON-serialisable (dicts, lists, strings, numbers, booleans, None)."""

    def put(self, kind: Kind, key: str, value: Any) -> None:
        """Idempotent upsert. Raises ``ValueError`` for an unknown kind, ``StoreUnavailable``."""
        ...

    def delete(self, kind: Kind, key: str) -> None:
        """Idempotent: deleting what is not there does nothing. Raises as ``put``."""
        ...

    def get(self, kind: Kind, key: str, default: Any = None) -> Any:
        """The value, or ``default``. Raises ``ValueError`` for an unknown kind."""
        ...

    def items(self, kind: Kind) -> Iterator[tuple[str, Any]]:
        """Every ``(key, value)`` of the kind, by key. Raises ``ValueError`` for an unknown kind."""
        ...

    def close(self) -> None:
        """Releases the store; idempotent. Nothing may be called afterwards."""
        ...


def write_refusal(store: object) -> str | None:
    """Why ``store`` refuses writes now (stores that may refuse have ``writable``), or None."""
    return getattr(store, "writable", None)


def check_kind(kind: str) -> None:
    """Raises ``ValueError`` naming the known kinds when ``kind`` is not one of them."""
    if kind not in KINDS:
        raise ValueError(f"unknown state kind {kind!r}; known: {', '.join(KINDS)}")
