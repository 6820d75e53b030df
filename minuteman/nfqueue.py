"""The NFQUEUE dataplane: the first packet of a VIP flow comes to a queue worker, the rest stays in the kernel.

```
client ─SYN→ 11.0.0.1:80 ─► conntrack (NEW) ─► mangle: in set minuteman? ─► NFQUEUE (the queue of
   the CPU handling the packet) ─► worker process pinned to that CPU: Maglev slot of the 5-tuple →
   backend id → verdict accept + mark ─► nat: DNAT by the mark (nft map: id → backend), masquerade
   if the mark asks ─► backend
       ◄──────── conntrack carries the rest of the flow (NAT both ways) ◄──
agent down: workers die with it; queue bypass lets the SYN on unmarked → filter: reject → the
client fails at once
```

Per-packet cost does not depend on the number of VIPs: one set lookup (hash) in mangle, one map
lookup in nat, and only new flows reach userspace. ``NfqueueDataplane`` lives in the agent: it
programs the kernel (through the ``Netfilter`` seam), gives each backend a stable id in the NAT
map, and keeps its queue workers (``Workers``: processes running ``minuteman.nfqueue_worker``,
or ``InlineWorkers`` in tests) told of the table. Workers report new connections and a bounded
sample of flows per backend; ``drain_outcomes`` checks those flows in conntrack once their reply
window has passed (answered, refused (entry gone or reset) or unanswered) for ``health``. A state
file keeps the table across restarts; the NAT map's ids are read back from the kernel, so a
restarted agent serves at once and adopts what it finds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import ipaddress
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cluster.addresses import NAMED_VIP_POOL
from minuteman.dataplane import ApplyResult, Backend, VipEntry, VipKey
from minuteman.flow_balancer import (
    FlowBalancer,
    FrameReader,
    Report,
    WorkerVip,
    frame,
    lookup_bytes,
)
from minuteman.maglev import maglev_table
from minuteman.netfilter import (
    MARK_ID_MASK,
    MARK_TAG,
    MARK_TAG_MASK,
    Flow,
    Netfilter,
    NetfilterError,
)
from minuteman.netfilter_kernel import KernelNetfilter

log = logging.getLogger("navstar.minuteman.nfqueue")

DEFAULT_QUEUE = 50
MAX_QUEUES = 8
MAX_PENDING_CHECKS = 4096     # flows awaiting their health check; beyond this they go unchecked
CHECKS_PER_BACKEND = 32       # … and at most this many per backend: enough for "5 failures in a row"
ROUTE_CACHE_SECONDS = 30.0
WORKER_START_TIMEOUT = 15.0
WORKER_SEND_TIMEOUT = 2.0     # s a worker may take to make room for its table; then it is replaced
REVIVE_BACKOFF_MAX = 10.0     # s between restarts of a worker that keeps ending at once
ID_GRACE_SECONDS = 3.0        # a backend id leaves the NAT map this long after the workers' table
# Workers run at nice -20: every new VIP connection waits on one, so under load it goes ahead of
# the clients (4 clients on 2 CPUs: 0.57-0.62x direct at nice 0, 0.61-0.66x at -20; one client
# unchanged). SCHED_FIFO did more for throughput (0.65-0.68x) but cost a lone client a third of
# its rate (0.48-0.59x): a real-time worker preempting its client moves the client to another CPU.
WORKER_NICE = -20



@functools.lru_cache(maxsize=1 << 16)
def vip_prefix(address: str) -> str:
    """The local route that carries a VIP: one for the whole named pool, /32 for the others."""
    return str(NAMED_VIP_POOL) if ipaddress.ip_address(address) in NAMED_VIP_POOL else f"{address}/32"


def default_state_path() -> Path:
    """One state file per network namespace (lab agents share a filesystem, not a namespace)."""
    return Path("/run/navstar/minuteman") / f"nfqueue-netns-{os.stat('/proc/self/ns/net').st_ino}.json"


class Workers(Protocol):
    """The queue readers. ``start`` and ``update`` take the table as workers need it
    (``full``: all of it); reports reach ``on_report`` (on any thread)."""

    def start(self, vips: dict[VipKey, WorkerVip], on_report) -> None:
        """Start the readers (from the thread whose end should end them); returns at once."""

    def wait_ready(self) -> None:
        """Block until every reader reads its queue (raises NetfilterError if one does not)."""

    def revive(self) -> None:
        """Replace readers that ended (from the thread that started them)."""

    def update(self, vips: dict[VipKey, WorkerVip], drop: list[VipKey], full: bool = False) -> None: ...

    def close(self) -> None: ...


class NfqueueDataplane:
    name = "nfqueue"

    def __init__(self, *, node_ip: str | None = None, queue: int = DEFAULT_QUEUE, queues: int | None = None,
                 pin: bool = True, netfilter: Netfilter | None = None, workers: Workers | None = None,
                 state_path: Path | None = None, reply_timeout: float = 0.4, clock=time.monotonic,
                 worker_nice: int | None = WORKER_NICE) -> None:
        """``queues`` (default: one per CPU, at most ``MAX_QUEUES``) from number ``queue`` on, one
        worker each; with ``pin`` each CPU's packets go to its own queue, read by a worker pinned
        to it."""
        self.queue = queue
        self.queue_numbers = range(queue, queue + (queues or min(os.cpu_count() or 1, MAX_QUEUES)))
        self.pin = pin
        self.netfilter = netfilter if netfilter is not None else KernelNetfilter(node_ip)
        self.workers = workers if workers is not None else ProcessWorkers(self.queue_numbers, pin, worker_nice)
        self.state_path = state_path or default_state_path()
        self.reply_timeout = reply_timeout
        self._clock = clock
        self._table: dict[VipKey, VipEntry] = self._load_state()
        try:
            self._ids: dict[Backend, int] = {b: i for i, b in self.netfilter.backend_ids().items()}
        except NetfilterError as exc:     # the first apply reads them again (and fails until it can)
            log.warning("reading the NAT map's backend ids: %s", exc)
            self._ids = {}
        self._next_id = max(self._ids.values(), default=0) + 1
        self._routes: dict[str, tuple[float, int]] = {}       # backend ip → (until, interface towards it)
        self._sent: dict[VipKey, WorkerVip] = {}              # what the workers hold
        self._lookups: dict[int, tuple[tuple[int, ...], bytes]] = {}
        self._worker_cache: dict[VipKey, tuple[VipEntry, WorkerVip]] = {}
        self._worker_oifs: dict[str, int] = {}
        self._worker_ids: dict[Backend, int] = {}
        self._started = False
        self._closed = False
        self._counts: Counter[tuple[VipKey, Backend]] = Counter()
        self._pending: deque[tuple[float, Flow, Backend]] = deque()
        self._checking: Counter[Backend] = Counter()    # pending checks per backend
        self._retiring: deque[tuple[float, list[int]]] = deque()   # (when, ids) to leave the NAT map
        self._lock = threading.Lock()    # report readers, apply and the loop share the state above
        self._apply_lock = threading.Lock()

    # -- the seam ------------------------------------------------------------------------
    def apply(self, table: dict[VipKey, VipEntry]) -> ApplyResult:
        with self._apply_lock:
            return self._apply(table)

    def _apply(self, table: dict[VipKey, VipEntry]) -> ApplyResult:
        result = ApplyResult()
        try:
            self.netfilter.ensure_base(self.queue, len(self.queue_numbers), cpu_fanout=self.pin)
            have = self.netfilter.vip_members()
            errors = self.netfilter.update_vips(set(table) - have, have - set(table))
            route_errors = self.netfilter.set_routes({vip_prefix(key.address) for key in table})
            stale = self._map_backends({b for entry in table.values() for b in entry.backends})
        except NetfilterError as exc:
            result.errors = {key: str(exc) for key in table}
            return result
        for key in table:
            if key in errors or vip_prefix(key.address) in route_errors:
                result.errors[key] = errors.get(key) or route_errors[vip_prefix(key.address)]
        result.removed = have - set(table)
        result.programmed = set(table) - set(result.errors)
        programmed = {key: table[key] for key in result.programmed}
        if programmed != self._table or not self.state_path.exists():
            self._table = programmed
            self._forget_unused()
            self._save_state()
        self._tell_workers()
        if stale:
            # Not yet: a worker may still be reading the frame that drops them, and a packet
            # it marks meanwhile must find its backend in the map.
            self._retiring.append((self._clock() + ID_GRACE_SECONDS, stale))
        self._retire_ids()
        return result

    def _retire_ids(self) -> None:
        """Take ids out of the NAT map once their grace is over (unless a backend got them back)."""
        now, due = self._clock(), set()
        while self._retiring and self._retiring[0][0] <= now:
            due.update(self._retiring.popleft()[1])
        due -= set(self._ids.values())
        if not due:
            return
        try:
            self.netfilter.update_backend_ids({}, due)
        except NetfilterError as exc:
            log.warning("removing %d backends from the NAT map: %s", len(due), exc)
            self._retiring.append((now + ID_GRACE_SECONDS, sorted(due)))

    def _forget_unused(self) -> None:
        """Per-backend bookkeeping of backends no VIP has any more."""
        backends = {b for entry in self._table.values() for b in (*entry.backends, *entry.draining)}
        ips = {b.ip for b in backends}
        with self._lock:
            self._counts = Counter({k: n for k, n in self._counts.items() if k[0] in self._table and k[1] in backends})
            self._checking = Counter({b: n for b, n in self._checking.items() if n > 0})
        self._routes = {ip: route for ip, route in self._routes.items() if ip in ips}

    def _map_backends(self, backends: set[Backend]) -> list[int]:
        """Give every backend an id in the kernel's NAT map (adding the missing ones now); the
        ids no longer needed, to remove once the workers have the new table."""
        kernel = self.netfilter.backend_ids()
        self._ids = {b: i for i, b in kernel.items() if b in backends or b in self._ids}
        add = {}
        used = set(kernel) | {i for _, ids in self._retiring for i in ids}
        for backend in sorted(backends - set(self._ids)):
            backend_id = self._new_id(used)
            used.add(backend_id)
            self._ids[backend] = backend_id
            add[backend_id] = backend
        if add:
            self.netfilter.update_backend_ids(add, ())
        stale = [i for b, i in self._ids.items() if b not in backends]
        if stale:
            self._ids = {b: i for b, i in self._ids.items() if b in backends}
        return stale

    def _new_id(self, used: set[int]) -> int:
        while self._next_id in used or not 0 < self._next_id <= MARK_ID_MASK:
            self._next_id = self._next_id + 1 if self._next_id < MARK_ID_MASK else 1
        backend_id, self._next_id = self._next_id, self._next_id + 1
        return backend_id

    def _worker_table(self) -> dict[VipKey, WorkerVip]:
        """The table as workers need it. Built per VIP only when its entry, the backend ids or
        the routes changed: an apply that changes nothing costs a comparison per VIP."""
        now = self._clock()
        oifs = {ip: self._oif(ip, now) for ip in {b.ip for entry in self._table.values() for b in entry.backends}}
        if oifs != self._worker_oifs or self._ids != self._worker_ids:
            self._worker_oifs, self._worker_ids = oifs, dict(self._ids)
            self._worker_cache = {}
        vips = {}
        for key, entry in self._table.items():
            cached = self._worker_cache.get(key)
            if cached is None or not (cached[0] is entry or cached[0] == entry):
                cached = (entry, self._worker_vip(entry, oifs))
                self._worker_cache[key] = cached
            vips[key] = cached[1]
        for key in set(self._worker_cache) - set(vips):
            del self._worker_cache[key]
        return vips

    def _worker_vip(self, entry: VipEntry, oifs: dict[str, int]) -> WorkerVip:
        backends = tuple(b for b in entry.backends if b in self._ids)
        lookup = entry.lookup if backends == entry.backends else ()
        if not lookup and backends and entry.lookup:    # a backend without an id: rebuild without it
            lookup = maglev_table(backends, len(entry.lookup))
        return WorkerVip(entry.key, backends, tuple(self._ids[b] for b in backends),
                         tuple(oifs[b.ip] for b in backends), self._lookup_bytes(lookup))

    def _lookup_bytes(self, lookup: tuple[int, ...]) -> bytes:
        """Maglev tables are shared between VIPs with the same backends (``maglev_table`` caches
        them): convert each once, by identity."""
        cached = self._lookups.get(id(lookup))
        if cached is None or cached[0] is not lookup:
            cached = (lookup, lookup_bytes(lookup))
            self._lookups[id(lookup)] = cached
        return cached[1]

    def _oif(self, ip: str, now: float) -> int:
        cached = self._routes.get(ip)
        if cached is None or cached[0] < now:
            route = self.netfilter.route_to(ip)
            cached = (now + ROUTE_CACHE_SECONDS, route.oif if route else 0)
            self._routes[ip] = cached
        return cached[1]

    def _tell_workers(self) -> None:
        if not self._started:
            return
        vips = self._worker_table()
        live = {id(entry.lookup) for entry in self._table.values()}
        self._lookups = {key: value for key, value in self._lookups.items() if key in live}
        changed = {key: vip for key, vip in vips.items() if self._sent.get(key) != vip}
        drop = [key for key in self._sent if key not in vips]
        if changed or drop:
            self.workers.update(changed, drop)
        self._sent = vips

    def current(self) -> dict[VipKey, VipEntry]:
        """VIPs in the set, with the backends this agent (or its predecessor) gave them; a VIP
        whose backends lost their NAT map entries, or whose rules or route are gone, shows none
        (drift, repaired by a re-apply)."""
        mapped = set(self.netfilter.backend_ids().values())
        # Rules, chains or routes gone (a firewall reload, ``nft flush ruleset``) break every VIP
        # they carry: shown as drift, so that repair re-applies.
        intact = self.netfilter.base_intact(self.queue, len(self.queue_numbers), cpu_fanout=self.pin)
        routes = self.netfilter.local_routes()
        # VIPs with the same backends mostly share one tuple: each is checked once, by identity.
        mapped_by_id: dict[int, tuple[tuple[Backend, ...], bool]] = {}
        out = {}
        for key in self.netfilter.vip_members():
            entry = self._table.get(key, VipEntry(key, ()))
            known = mapped_by_id.get(id(entry.backends))
            if known is None or known[0] is not entry.backends:
                known = mapped_by_id[id(entry.backends)] = (entry.backends, all(b in mapped for b in entry.backends))
            whole = intact and vip_prefix(key.address) in routes and known[1]
            out[key] = entry if whole else VipEntry(key, ())
        return out

    def connection_counts(self) -> dict[tuple[VipKey, Backend], int]:
        with self._lock:
            return dict(self._counts)

    def _on_report(self, report: Report) -> None:
        deadline = self._clock() + self.reply_timeout
        with self._lock:
            self._counts.update(report.connections)
            for flow, backend in report.samples:
                if self._checking[backend] < CHECKS_PER_BACKEND and len(self._pending) < MAX_PENDING_CHECKS:
                    self._pending.append((deadline, flow, backend))
                    self._checking[backend] += 1

    def drain_outcomes(self) -> list[tuple[Backend, bool]]:
        """Outcomes of sampled TCP flows whose reply window has passed (for ``health``), read from
        conntrack in one round trip."""
        now, due = self._clock(), []
        with self._lock:
            while self._pending and self._pending[0][0] <= now:
                _, flow, backend = self._pending.popleft()
                self._checking[backend] -= 1
                due.append((flow, backend))
        if not due:
            return []
        try:
            states = self.netfilter.flow_states([flow for flow, _ in due])
        except NetfilterError as exc:
            log.warning("reading %d flows for health failed: %s", len(due), exc)
            return []
        # Gone within the reply window: conntrack kills an entry whose only reply was a
        # reset (refused); answered flows linger (TIME_WAIT, CLOSE) for longer than this.
        return [(backend, state is not None and state.answered) for (_, backend), state in zip(due, states, strict=True)]

    def backend_of(self, mark: int) -> Backend | None:
        """The backend a verdict mark names (None: no mark of ours)."""
        if mark & MARK_TAG_MASK != MARK_TAG:
            return None
        backend_id = mark & MARK_ID_MASK
        return next((b for b, i in self._ids.items() if i == backend_id), None)

    async def start(self) -> None:
        """Start the queue workers with the table (idempotent); returns once they read their queues."""
        if self._started:
            return
        self._sent = await asyncio.to_thread(self._worker_table)
        self.workers.start(self._sent, self._on_report)
        await asyncio.to_thread(self.workers.wait_ready)
        self._started = True
        log.info("NFQUEUE %s bound (%s); %d VIPs", ",".join(map(str, self.queue_numbers)),
                 "a worker pinned to each CPU" if self.pin else "a worker each", len(self._table))

    def maintain(self) -> None:
        """Periodic care on the agent's loop (the thread that started the workers): a queue
        worker that died is replaced, so new flows are balanced again within a poll."""
        if self._started:
            self.workers.revive()
        if self._retiring and self._retiring[0][0] <= self._clock() and self._apply_lock.acquire(blocking=False):
            try:      # an apply holds the lock: it retires them itself
                self._retire_ids()
            finally:
                self._apply_lock.release()

    def close(self, keep_kernel_state: bool = True) -> None:
        """Stop the workers; with ``keep_kernel_state=False`` also remove all kernel state and the
        state file. Once is enough: a second call does nothing."""
        with self._apply_lock:     # not in the middle of an apply
            if self._closed:
                return
            self._closed = True
            self.workers.close()
            self._started = False
            if not keep_kernel_state:
                self.netfilter.remove_base()
                self._table = {}
                self.state_path.unlink(missing_ok=True)
                self.state_path.with_suffix(".tmp").unlink(missing_ok=True)
            self.netfilter.close()

    # -- state kept across restarts --------------------------------------------------------
    def _save_state(self) -> None:
        entries = [{"address": k.address, "port": k.port, "protocol": k.protocol,
                    "backends": [[b.ip, b.port] for b in e.backends],
                    "draining": [[b.ip, b.port] for b in e.draining], "table_size": len(e.lookup)}
                   for k, e in sorted(self._table.items())]
        tmp = self.state_path.with_suffix(".tmp")
        try:     # only a restart's head start depends on it: the kernel state is what serves
            self.state_path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps({"version": 1, "vips": entries}))
            tmp.replace(self.state_path)
        except OSError as exc:
            log.warning("cannot keep the VIP table in %s: %s", self.state_path, exc)
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)

    def _load_state(self) -> dict[VipKey, VipEntry]:
        try:
            data = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable state %s: %s", self.state_path, exc)
            return {}
        items = data.get("vips") if isinstance(data, dict) and data.get("version") == 1 else None
        if not isinstance(items, list):
            log.warning("ignoring state %s: not a version 1 VIP table", self.state_path)
            return {}
        table = {}
        for n, item in enumerate(items):
            try:
                key = VipKey(str(item["address"]), int(item["port"]), item["protocol"])
                if key.protocol not in ("tcp", "udp"):
                    raise ValueError(f"protocol {key.protocol!r}")
                backends = tuple(Backend(str(ip), int(port)) for ip, port in item["backends"])
                size = int(item["table_size"])
                if not 0 <= size <= 1 << 20:
                    raise ValueError(f"table_size {size}")
                lookup = maglev_table(backends, size) if size and backends else ()
                draining = tuple(Backend(str(ip), int(port)) for ip, port in item["draining"])
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("state %s: skipping vips[%d]: %s", self.state_path, n, exc)
                continue
            table[key] = VipEntry(key, backends, lookup, draining)
        return table


class InlineWorkers:
    """One ``FlowBalancer`` in this process, fed packets by hand (tests, tools)."""

    def __init__(self, rng=None) -> None:
        self.balancer = FlowBalancer(rng)
        self._on_report = None
        self.updates = 0

    def start(self, vips: dict[VipKey, WorkerVip], on_report) -> None:
        self._on_report = on_report
        self.balancer.update(vips, full=True)

    def wait_ready(self) -> None:
        pass

    def revive(self) -> None:
        pass

    def update(self, vips: dict[VipKey, WorkerVip], drop: list[VipKey], full: bool = False) -> None:
        self.updates += 1
        self.balancer.update(vips, drop, full)

    def mark_for(self, payload: bytes, indev: int = 0) -> int:
        return self.balancer.mark_for(payload, indev)

    def flush(self) -> None:
        """Deliver what the balancer saw, as a worker's periodic report would."""
        report = self.balancer.take_report()
        if report and self._on_report is not None:
            self._on_report(report)

    def close(self) -> None:
        pass


@dataclass
class _Worker:
    number: int
    cpu: int | None
    proc: subprocess.Popen
    sock: socket.socket
    ready: threading.Event
    started: float = 0.0


class ProcessWorkers:
    """One ``minuteman.nfqueue_worker`` process per queue, each with a socketpair to this one and
    a thread here that gives it the table and reads its reports. With ``pin`` the worker of
    queue ``first + i`` is pinned to CPU ``i`` (the rules fan the queues out by CPU). A worker
    that dies is replaced by ``revive`` (called from the thread that started them)."""

    def __init__(self, queue_numbers: range, pin: bool, nice: int | None = WORKER_NICE) -> None:
        self.queue_numbers = queue_numbers
        self.pin = pin
        self.nice = nice
        self._workers: list[_Worker] = []
        self._table: dict[VipKey, WorkerVip] = {}       # all of it, as the workers have it
        self._send_lock = threading.Lock()
        self._on_report = None
        self._backoff: dict[int, tuple[float, float]] = {}    # queue → (next start, delay)
        self.revived = 0

    def start(self, vips: dict[VipKey, WorkerVip], on_report) -> None:
        self._table, self._on_report = dict(vips), on_report
        with self._send_lock:
            for number in self.queue_numbers:
                self._workers.append(self._spawn(number, self._cpu_of(number) if self.pin else None))

    def _cpu_of(self, number: int) -> int | None:
        """The CPU whose packets ``--queue-cpu-fanout`` sends to this queue (CPU c → queue
        first + c mod n), if this process may run there."""
        index, count = number - self.queue_numbers[0], len(self.queue_numbers)
        return next((cpu for cpu in sorted(os.sched_getaffinity(0)) if cpu % count == index), None)

    def _spawn(self, number: int, cpu: int | None) -> _Worker:
        """A worker, registered by the caller under ``_send_lock``; its thread sends it the table
        once that lock is free, so no update falls between the two."""
        ours, theirs = socket.socketpair()
        try:
            ours.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            # A worker that stops reading must not block the agent's updates: its sends fail
            # after this long, and the worker is replaced.
            ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(WORKER_SEND_TIMEOUT))
            argv = [sys.executable, "-m", "minuteman.nfqueue_worker", "--queue", str(number),
                    "--control-fd", str(theirs.fileno())] + (["--cpu", str(cpu)] if cpu is not None else []) \
                + (["--nice", str(self.nice)] if self.nice is not None else [])
            # The parent-death signal follows the thread that starts the worker: the caller's.
            proc = subprocess.Popen(argv, pass_fds=(theirs.fileno(),), cwd=Path(__file__).resolve().parents[1])
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        worker = _Worker(number, cpu, proc, ours, threading.Event(), time.monotonic())
        threading.Thread(target=self._serve, args=(worker,), daemon=True, name=f"nfqueue-{number}").start()
        return worker

    def _serve(self, worker: _Worker) -> None:
        """The whole table first, then the worker's messages until it ends."""
        try:
            with self._send_lock:
                worker.sock.sendall(frame({"vips": self._table, "full": True}))
        except OSError as exc:
            self._give_up(worker, exc)
            return
        frames = FrameReader()
        while True:
            try:
                data = worker.sock.recv(1 << 20)
                messages = frames.feed(data)
            except Exception as exc:    # a broken stream: this worker's reports are lost
                self._give_up(worker, exc)
                return
            if not data:
                return
            for message in messages:
                try:
                    if "ready" in message:
                        worker.ready.set()
                    elif "report" in message:
                        self._on_report(message["report"])
                except Exception:
                    log.exception("NFQUEUE worker %d: a report could not be taken", worker.number)

    @staticmethod
    def _give_up(worker: _Worker, exc: BaseException) -> None:
        """A worker we cannot talk to is ended; ``revive`` starts another with the whole table."""
        if worker.proc.poll() is None:
            log.error("NFQUEUE worker for queue %d is out of touch (%s): replacing it", worker.number, exc)
            worker.proc.kill()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + WORKER_START_TIMEOUT
        for worker in self._workers:
            if not worker.ready.wait(max(0.0, deadline - time.monotonic())):
                self.close()
                raise NetfilterError(f"NFQUEUE worker for queue {worker.number} did not start "
                                     f"(exit {worker.proc.poll()})")

    def revive(self) -> None:
        now = time.monotonic()
        for i, worker in enumerate(self._workers):
            if worker.proc.poll() is None:
                continue
            # One that ends at once again (its queue taken, a broken install) is retried later
            # and later, up to REVIVE_BACKOFF_MAX, not at every poll.
            next_start, delay = self._backoff.get(worker.number, (0.0, 0.0))
            if now < next_start:
                continue
            delay = min(REVIVE_BACKOFF_MAX, max(0.2, delay * 2)) if now - worker.started < 5.0 else 0.0
            self._backoff[worker.number] = (now + delay, delay)
            log.error("NFQUEUE worker for queue %d ended (exit %s): starting another", worker.number,
                      worker.proc.returncode)
            worker.sock.close()
            with self._send_lock:
                self._workers[i] = self._spawn(worker.number, worker.cpu)
            self.revived += 1

    def update(self, vips: dict[VipKey, WorkerVip], drop: list[VipKey], full: bool = False) -> None:
        data = frame({"vips": vips, "drop": drop, "full": full})
        with self._send_lock:
            if full:
                self._table = dict(vips)
            else:
                self._table.update(vips)
                for key in drop:
                    self._table.pop(key, None)
            for worker in self._workers:
                try:
                    worker.sock.sendall(data)
                except OSError as exc:     # a partial frame leaves the stream unusable
                    self._give_up(worker, exc)

    def close(self) -> None:
        for worker in self._workers:
            try:
                worker.sock.sendall(frame({"stop": True}))
            except OSError:
                pass
        for worker in self._workers:
            try:
                worker.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                worker.proc.kill()
                worker.proc.wait()
            worker.sock.close()
        self._workers = []


def _timeval(seconds: float) -> bytes:
    return struct.pack("ll", int(seconds), int(seconds % 1 * 1_000_000))


# -- a standalone node balancer (ops and kernel tests) -------------------------------------
def main(argv: list[str] | None = None) -> int:
    """Serve the VIPs of a cluster-view JSON file from this namespace, re-reading it when it changes."""
    parser = argparse.ArgumentParser(prog="python -m minuteman.nfqueue", description=main.__doc__)
    parser.add_argument("--view", required=True, type=Path, help="ClusterView JSON file")
    parser.add_argument("--node-ip", help="this node's address (source of locally originated VIP flows)")
    parser.add_argument("--queue", type=int, default=DEFAULT_QUEUE, help="first queue number")
    parser.add_argument("--queues", type=int, help=f"how many queues (default: one per CPU, at most {MAX_QUEUES})")
    parser.add_argument("--no-pin", dest="pin", action="store_false",
                        help="spread flows over the queues by hash instead of by CPU, workers unpinned")
    parser.add_argument("--state-file", type=Path)
    parser.add_argument("--balancing", choices=["maglev", "p2c"], default="maglev")
    parser.add_argument("--api", help="serve /v1/vips on host:port")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    from cluster.view import ClusterView
    from minuteman.reconciler import LoadBalancer

    async def serve() -> None:
        dataplane = NfqueueDataplane(node_ip=args.node_ip, queue=args.queue, queues=args.queues, pin=args.pin,
                                     state_path=args.state_file)
        await dataplane.start()      # workers reading their queues before "ready"
        lb = LoadBalancer(dataplane, balancing=args.balancing)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        mtime = 0.0
        runner = asyncio.create_task(lb.run(repair_interval=2.0))
        server = None
        if args.api:
            import uvicorn
            from starlette.applications import Starlette

            from minuteman.api import vip_routes

            host, port = args.api.rsplit(":", 1)
            server = uvicorn.Server(uvicorn.Config(Starlette(routes=vip_routes(lb)), host=host,
                                                   port=int(port), log_level="warning"))
            asyncio.create_task(server.serve())
        while not stop.is_set():
            stat = args.view.stat()
            if stat.st_mtime != mtime:
                mtime = stat.st_mtime
                lb.on_view(ClusterView.model_validate_json(args.view.read_text()))
                print(f"ready version={lb.status.view_version} vips={len(lb.vips_json())}", flush=True)
            try:
                await asyncio.wait_for(stop.wait(), 0.2)
            except TimeoutError:
                pass
        runner.cancel()
        if server is not None:
            server.should_exit = True
        lb.close(keep_kernel_state=True)

    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
