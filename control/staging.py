"""``StagedWrites``: group commit for state stores (``control.store``, ``control.store_zk``).

A request that writes calls ``begin``; its writes (and those of any request running meanwhile)
are staged, reads see them, and ``flush`` commits them together just before the answer leaves
(``control.http.ha.StoreGuard``; it may run on a worker thread while the loop stages more, so
reads also see writes being committed). Outside a request, a write commits at once. A store
supplies ``writable`` (why writes are refused now, or None), ``_commit_many`` (makes the
writes durable together or raises ``StoreUnavailable``) and what is committed (``_committed``,
``_committed_texts``); this class gives it the seam's ``put``, ``delete``, ``get`` and ``items``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

from control.state import Kind, StoreUnavailable, check_kind

# (kind, key) → the value's JSON text, or None for a delete.
Writes = dict[tuple[str, str], str | None]


class StagedWrites:
    def __init__(self) -> None:
        self._staging = 0               # write requests in flight
        self._staged: Writes = {}
        self._inflight: list[Writes] = []   # being committed by flush

    @property
    def writable(self) -> str | None:
        raise NotImplementedError

    def _commit_many(self, writes: Writes) -> None:
        raise NotImplementedError

    def _refused_midway(self, why: str) -> None:
        """A write was refused after its caller may have changed memory (the store turned
        unwritable after the request was let in). Stores that can reload say so here."""

    def _committed(self, kind: str, key: str) -> str | None:
        """The key's committed JSON text, or None."""
        raise NotImplementedError

    def _committed_texts(self, kind: str) -> dict[str, str]:
        """Every committed key of the kind → its JSON text (a new dict)."""
        raise NotImplementedError

    # ---- the seam (control.state.StateStore) --------------------------------------------
    def put(self, kind: Kind, key: str, value: Any) -> None:
        check_kind(kind)
        self._write(kind, key, json.dumps(value, separators=(",", ":")))

    def delete(self, kind: Kind, key: str) -> None:
        check_kind(kind)
        self._write(kind, key, None)

    def get(self, kind: Kind, key: str, default: Any = None) -> Any:
        check_kind(kind)
        staged, text = self._pending(kind, key)
        if not staged:
            text = self._committed(kind, key)
        return json.loads(text) if text is not None else copy.deepcopy(default)

    def items(self, kind: Kind) -> Iterator[tuple[str, Any]]:
        check_kind(kind)
        for key, text in sorted(self._with_pending(kind, self._committed_texts(kind)).items()):
            yield key, json.loads(text)

    def begin(self) -> None:
        """A request that writes has started: writes from here on are staged (every writer on
        the loop's) until ``flush``. A write staged while the store refuses writes raises
        ``StoreUnavailable`` at once."""
        self._staging += 1

    def end(self) -> None:
        """The request is answered (after ``flush``); staging stops with the last one."""
        self._staging = max(0, self._staging - 1)
        if self._staging == 0 and self._staged:
            self.flush()

    def flush(self) -> None:
        """Commits everything staged (by any request): the caller's writes are durable when it
        returns. Raises ``StoreUnavailable`` (the staged writes are dropped)."""
        staged, self._staged = self._staged, {}
        if not staged:
            return
        # Until committed, reads still see these (flush may run on a worker thread).
        self._inflight.append(staged)
        try:
            self._commit_many(staged)
        finally:
            self._inflight.remove(staged)

    def _write(self, kind: str, key: str, text: str | None) -> None:
        if self._staging:
            why = self.writable
            if why is not None:
                self._refused_midway(why)
                raise StoreUnavailable(why)
            self._staged[(kind, key)] = text
            return
        self._commit_many({(kind, key): text})

    def _pending(self, kind: str, key: str) -> tuple[bool, str | None]:
        """``(True, text)`` when a staged or in-flight write holds the key (None: deleted)."""
        for pending in (self._staged, *reversed(self._inflight)):
            if (kind, key) in pending:
                return True, pending[(kind, key)]
        return False, None

    def _with_pending(self, kind: str, texts: dict[str, str]) -> dict[str, str]:
        """``texts`` (key → JSON of the kind, as committed) with the staged and in-flight writes."""
        # list(): a flush on a worker thread may be changing them meanwhile.
        pending = [item for writes in (*self._inflight, self._staged) for item in list(writes.items())]
        for (staged_kind, key), text in pending:
            if staged_kind == kind:
                if text is None:
                    texts.pop(key, None)
                else:
                    texts[key] = text
        return texts
