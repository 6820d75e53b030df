"""``MemoryStore``: the state store seam in a dict (tests; a master that needs no restart)."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

from control.state import KINDS, Kind, check_kind


class MemoryStore:
    """Keeps JSON round-tripped copies, so callers see what a durable store would give back."""

    def __init__(self) -> None:
        self._kinds: dict[str, dict[str, str]] = {kind: {} for kind in KINDS}
        self.writes = 0

    def put(self, kind: Kind, key: str, value: Any) -> None:
        check_kind(kind)
        self._kinds[kind][key] = json.dumps(value, separators=(",", ":"))
        self.writes += 1

    def delete(self, kind: Kind, key: str) -> None:
        check_kind(kind)
        if self._kinds[kind].pop(key, None) is not None:
            self.writes += 1

    def get(self, kind: Kind, key: str, default: Any = None) -> Any:
        check_kind(kind)
        raw = self._kinds[kind].get(key)
        return json.loads(raw) if raw is not None else copy.deepcopy(default)

    def items(self, kind: Kind) -> Iterator[tuple[str, Any]]:
        check_kind(kind)
        for key, raw in sorted(self._kinds[kind].items()):
            yield key, json.loads(raw)

    def close(self) -> None:
        pass
