"""``ZkStore``: the state store seam (``control.state``) in ZooKeeper, for several masters.

Layout under the masters' path (``/mesos`` in ``zk://…/mesos``), next to the leader znodes::

    /mesos/json.info_0000000003          the election (control.leadership)
    /mesos/state/epoch                   bumped by every new leader: its version fences the others
    /mesos/state/<kind>/<quoted key>     one JSON document per (kind, key)

Only the leader writes. ``claim()`` makes this store the writer: it bumps ``epoch`` and loads
every document with its znode version into memory. Each write is one ZooKeeper transaction
that checks the epoch's version (a deposed leader's write fails: *fencing*) and the document's
version (compare-and-set against what this writer last wrote). Reads come from memory — the
leader is the only writer — so they keep answering while ZooKeeper is below quorum.

``StoreUnavailable`` when the client is not connected (quorum lost, session gone; nothing
sent), the ensemble refuses the transaction, or the connection drops mid-commit (the outcome is
unknown: those keys are read back before their next write, and once ZooKeeper answers again
``on_lost`` is told, since the master's memory already holds the change). ``on_lost`` is told once another writer
has taken over (the epoch moved) or a document changed under this writer: its memory must not
be acted on any more (the master restarts as a follower).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from urllib.parse import quote, unquote

from kazoo.client import KazooClient
from kazoo.exceptions import BadVersionError, KazooException, NodeExistsError, NoNodeError
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.protocol.states import KazooState

from control.staging import StagedWrites, Writes
from control.state import KINDS, StoreUnavailable

log = logging.getLogger("navstar.store.zk")

WRITE_TIMEOUT = 5.0
# Documents per transaction (a transaction is one request: ZooKeeper's 1 MB jute.maxbuffer).
MAX_OPS = 100


def key_node(key: str) -> str:
    """A key as one znode name: no ``/``, never empty, ``.`` or ``..`` (reversible)."""
    return quote(key, safe="").replace(".", "%2E") or "%"


def node_key(name: str) -> str:
    return "" if name == "%" else unquote(name)


class ZkStore(StagedWrites):
    def __init__(self, client: KazooClient, path: str = "/mesos", write_timeout: float = WRITE_TIMEOUT,
                 on_lost: Callable[[str], None] | None = None) -> None:
        super().__init__()
        self.client = client
        self.base = path.rstrip("/") + "/state"
        self.epoch_path = self.base + "/epoch"
        self.write_timeout = write_timeout
        self.on_lost = on_lost or (lambda _why: None)
        self._epoch_version: int | None = None
        # kind → key → (JSON text, znode version): what this writer knows is durable.
        self._docs: dict[str, dict[str, tuple[str, int]]] = {}
        self._uncertain: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self.writes = 0
        self.lost: str | None = None
        self._divergence_watch = False

    # ---- taking over -------------------------------------------------------------------
    def claim(self) -> int:
        """Become the only writer: bump the epoch (fencing every earlier writer), then load every
        document. Returns the new epoch. Raises ``StoreUnavailable`` when ZooKeeper cannot answer."""
        try:
            self.client.ensure_path(self.base)
            try:
                self.client.create(self.epoch_path, b"0")
            except NodeExistsError:
                pass
            data, _stat = self.client.get(self.epoch_path)
            epoch = int(data or b"0") + 1
            stat = self.client.set(self.epoch_path, str(epoch).encode())
            self._epoch_version = stat.version
            self._load()
        except (KazooException, KazooTimeoutError) as exc:
            raise StoreUnavailable(f"ZooKeeper: {exc.__class__.__name__} {exc}") from exc
        log.info("state: epoch %d, %d documents", epoch, sum(len(d) for d in self._docs.values()))
        return epoch

    def _load(self) -> None:
        docs: dict[str, dict[str, tuple[str, int]]] = {}
        for kind in self._kinds_in_zk():
            path = f"{self.base}/{kind}"
            names = self.client.get_children(path)
            # One round trip for all of them: the requests are pipelined.
            pending = [(name, self.client.get_async(f"{path}/{name}")) for name in names]
            found: dict[str, tuple[str, int]] = {}
            for name, result in pending:
                try:
                    data, stat = result.get(timeout=self.write_timeout)
                except NoNodeError:
                    continue
                found[node_key(name)] = (data.decode(), stat.version)
            docs[kind] = found
        self._docs = docs

    def _kinds_in_zk(self) -> list[str]:
        # Every kind under state/, known to this version or not: a newer master's kinds survive.
        return [name for name in self.client.get_children(self.base) if name != "epoch"]

    # ---- what is committed (control.staging gives the seam) -------------------------------
    def _committed(self, kind: str, key: str) -> str | None:
        known = self._docs.get(kind, {}).get(key)
        return known[0] if known is not None else None

    def _committed_texts(self, kind: str) -> dict[str, str]:
        # list(): a flush on a worker thread may be adding documents meanwhile.
        return {key: text for key, (text, _version) in list(self._docs.get(kind, {}).items())}

    def close(self) -> None:
        pass        # the client belongs to the process (the election shares its session)

    # ---- writing -----------------------------------------------------------------------
    @property
    def writable(self) -> str | None:
        """Why a write would be refused now, or None."""
        if self.lost is not None:
            return self.lost
        if self._epoch_version is None:
            return "this master is not the leader (the state store is not claimed)"
        if self.client.state != KazooState.CONNECTED:
            return f"ZooKeeper is not reachable (session {self.client.state.lower()}): no quorum"
        return None

    def _path(self, kind: str, key: str) -> str:
        return f"{self.base}/{kind}/{key_node(key)}"

    def _known(self, kind: str, key: str) -> tuple[str, int] | None:
        """What ZooKeeper holds for the key: from memory, or read again when a write of it had
        an unknown outcome (it may or may not have committed; only this writer writes it)."""
        if (kind, key) in self._uncertain:
            try:
                data, stat = self.client.get(self._path(kind, key))
                self._docs.setdefault(kind, {})[key] = (data.decode(), stat.version)
            except NoNodeError:
                self._docs.get(kind, {}).pop(key, None)
            except (KazooException, KazooTimeoutError) as exc:
                raise StoreUnavailable(f"ZooKeeper: {exc.__class__.__name__}") from exc
            self._uncertain.discard((kind, key))
        return self._docs.get(kind, {}).get(key)

    def _commit_many(self, writes: Writes) -> None:
        """One transaction per MAX_OPS documents, each checking the epoch's version and every
        document's (compare-and-set); memory follows what committed."""
        with self._lock:
            why = self.writable
            if why is not None:
                raise StoreUnavailable(why)
            ops: list[tuple[str, str, str | None, tuple[str, int] | None]] = []
            for (kind, key), text in writes.items():
                known = self._known(kind, key)
                if (known is None and text is None) or (known is not None and known[0] == text):
                    continue        # idempotent: nothing to make durable
                if kind not in self._docs:
                    self._ensure_kind(kind)
                ops.append((kind, key, text, known))
            for start in range(0, len(ops), MAX_OPS):
                self._commit(ops[start:start + MAX_OPS])

    def _commit(self, ops: list[tuple[str, str, str | None, tuple[str, int] | None]]) -> None:
        tx = self.client.transaction()
        tx.check(self.epoch_path, self._epoch_version)
        for kind, key, text, known in ops:
            path = self._path(kind, key)
            if text is None:
                assert known is not None
                tx.delete(path, version=known[1])
            elif known is None:
                tx.create(path, text.encode())
            else:
                tx.set_data(path, text.encode(), version=known[1])
        try:
            results = tx.commit_async().get(timeout=self.write_timeout)
        except (KazooException, KazooTimeoutError) as exc:
            # Sent, but whether it committed is unknown: the keys are read again before their next write.
            self._uncertain.update((kind, key) for kind, key, _text, _known in ops)
            self._diverged()
            raise StoreUnavailable(f"ZooKeeper: {exc.__class__.__name__}") from exc
        failures = [r for r in results if isinstance(r, Exception)]
        if failures:
            if isinstance(results[0], BadVersionError):
                self._lose("another master has taken over the state (epoch changed)")
            elif any(isinstance(r, (BadVersionError, NoNodeError, NodeExistsError)) for r in results[1:]):
                self._lose("a document changed under this writer (compare-and-set failed)")
            raise StoreUnavailable(f"refused by ZooKeeper: {', '.join(type(r).__name__ for r in failures)}")
        for (kind, key, text, known), result in zip(ops, results[1:], strict=True):
            if text is None:
                self._docs[kind].pop(key, None)
            else:
                version = result.version if known is not None else 0
                self._docs.setdefault(kind, {})[key] = (text, version)
        self.writes += 1

    def _ensure_kind(self, kind: str) -> None:
        try:
            self.client.ensure_path(f"{self.base}/{kind}")
        except (KazooException, KazooTimeoutError) as exc:
            raise StoreUnavailable(f"ZooKeeper: {exc.__class__.__name__}") from exc
        self._docs.setdefault(kind, {})

    def _diverged(self) -> None:
        """A commit's outcome is unknown, and the caller's memory already holds the change: once
        ZooKeeper answers again this writer hands over (``on_lost``), so a master reloads what
        did commit. Until then it keeps serving reads (and refusing writes)."""
        if self._divergence_watch:
            return
        self._divergence_watch = True

        def reconnected(state: str) -> bool:
            if state == KazooState.CONNECTED:
                self._lose("a commit's outcome was unknown while ZooKeeper was unreachable; "
                           "reloading what committed")
                return True     # removes the listener
            return False

        self.client.add_listener(reconnected)

    def _lose(self, why: str) -> None:
        if self.lost is None:
            self.lost = why
            log.error("state store: %s", why)
            self.on_lost(why)


__all__ = ["KINDS", "ZkStore", "key_node", "node_key"]
