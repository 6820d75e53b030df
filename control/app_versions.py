"""Versions: every definition an app (or group) was stored with, by its version timestamp.

``/v2/apps/{id}/versions`` lists an app's newest first, ``/v2/apps/{id}/versions/{version}``
gives one, and ``PUT /v2/apps/{id}`` with ``{"version": …}`` stores that definition again (a
rollback, as a new version); groups have the same (``/v2/groups/{id}/versions``). Kept in the
state store (kinds ``app_versions`` and ``group_versions``, key ``<id> <version>``), at most
``MAX_VERSIONS`` per id (Marathon's ``--max_versions`` default); the oldest go first. Removing
an app or group forgets its versions, as Marathon does.
"""

from __future__ import annotations

import bisect
from typing import Any, Literal

from control.marathon_models import AppDefinition
from control.state import StateStore

MAX_VERSIONS = 50


class VersionLog:
    """JSON documents by (id, version) in one store kind, with an index of each id's versions."""

    def __init__(self, store: StateStore, kind: Literal["app_versions", "group_versions"],
                 max_versions: int = MAX_VERSIONS) -> None:
        self._store = store
        self._kind: Literal["app_versions", "group_versions"] = kind
        self.max_versions = max_versions
        self._index: dict[str, list[str]] = {}      # id → its versions, oldest first

    def load(self) -> None:
        """Reads the index back after a restart."""
        for key, _value in self._store.items(self._kind):
            owner, _, version = key.rpartition(" ")
            bisect.insort(self._index.setdefault(owner, []), version)

    def put(self, owner: str, version: str, value: dict[str, Any]) -> None:
        """Keeps ``value`` as ``owner``'s ``version`` (idempotent); the oldest beyond the limit go."""
        versions = self._index.setdefault(owner, [])
        if version not in versions:
            bisect.insort(versions, version)
        self._store.put(self._kind, _key(owner, version), value)
        while len(versions) > self.max_versions:
            self._store.delete(self._kind, _key(owner, versions.pop(0)))

    def versions(self, owner: str) -> list[str]:
        """Newest first (``[]`` for an id never recorded)."""
        return list(reversed(self._index.get(owner, [])))

    def has(self, owner: str) -> bool:
        return bool(self._index.get(owner))

    def raw(self, owner: str, version: str) -> dict[str, Any] | None:
        value: Any = self._store.get(self._kind, _key(owner, version))
        return value if isinstance(value, dict) else None

    def forget(self, owner: str) -> None:
        """The id is gone: its versions too. Idempotent."""
        for version in self._index.pop(owner, []):
            self._store.delete(self._kind, _key(owner, version))

    def owners(self) -> list[str]:
        return list(self._index)


class AppVersions(VersionLog):
    def __init__(self, store: StateStore, max_versions: int = MAX_VERSIONS) -> None:
        super().__init__(store, "app_versions", max_versions)

    def record(self, app: AppDefinition) -> None:
        """Keeps ``app`` (stamped: its ``version`` set) under its version. Idempotent."""
        if not app.version:
            raise ValueError("an app is recorded once its version is stamped")
        self.put(app.id, app.version, app.model_dump(by_alias=True, exclude_none=True))

    def get(self, app_id: str, version: str) -> AppDefinition | None:
        raw = self.raw(app_id, version)
        return AppDefinition.model_validate(raw) if raw is not None else None


def _key(owner: str, version: str) -> str:
    return f"{owner} {version}"
