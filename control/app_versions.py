"""App versions: every definition an app was stored with, by its version timestamp.

``/v2/apps/{id}/versions`` lists them newest first, ``/v2/apps/{id}/versions/{version}`` gives
one, and ``PUT /v2/apps/{id}`` with ``{"version": …}`` stores that definition again (a rollback,
as a new version). Kept in the state store (kind ``app_versions``, key ``<app id> <version>``),
at most ``MAX_VERSIONS`` per app (Marathon's ``--max_versions`` default); the oldest go first.
Removing an app forgets its versions, as Marathon does.
"""

from __future__ import annotations

import bisect
from typing import Any

from control.marathon_models import AppDefinition
from control.state import StateStore

MAX_VERSIONS = 50


class AppVersions:
    def __init__(self, store: StateStore, max_versions: int = MAX_VERSIONS) -> None:
        self._store = store
        self.max_versions = max_versions
        self._index: dict[str, list[str]] = {}      # app id → its versions, oldest first

    def load(self) -> None:
        """Reads the index back after a restart."""
        for key, _value in self._store.items("app_versions"):
            app_id, _, version = key.rpartition(" ")
            bisect.insort(self._index.setdefault(app_id, []), version)

    def record(self, app: AppDefinition) -> None:
        """Keeps ``app`` (stamped: its ``version`` set) under its version. Idempotent."""
        if not app.version:
            raise ValueError("an app is recorded once its version is stamped")
        versions = self._index.setdefault(app.id, [])
        if app.version not in versions:
            bisect.insort(versions, app.version)
        self._store.put("app_versions", _key(app.id, app.version), app.model_dump(by_alias=True, exclude_none=True))
        while len(versions) > self.max_versions:
            self._store.delete("app_versions", _key(app.id, versions.pop(0)))

    def versions(self, app_id: str) -> list[str]:
        """Newest first (``[]`` for an app never recorded)."""
        return list(reversed(self._index.get(app_id, [])))

    def has(self, app_id: str) -> bool:
        return bool(self._index.get(app_id))

    def get(self, app_id: str, version: str) -> AppDefinition | None:
        raw: Any = self._store.get("app_versions", _key(app_id, version))
        return AppDefinition.model_validate(raw) if raw is not None else None

    def forget(self, app_id: str) -> None:
        """The app is gone: its versions too. Idempotent."""
        for version in self._index.pop(app_id, []):
            self._store.delete("app_versions", _key(app_id, version))


def _key(app_id: str, version: str) -> str:
    return f"{app_id} {version}"
