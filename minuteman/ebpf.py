"""The eBPF socket load balancer: the real ``Dataplane`` over ``bpf/`` (cgroup sock_addr programs).

    VipEntry table ──► map form (service, backends, table chunks) ──diff──► pinned maps ◄── programs
                                                       ▲    (packed batch writes)    │
                       what the last apply wrote ──────┤                             │
                       or, when not trusted, snapshot ◄┴──────── batch read ◄────────┘

``apply`` compares the desired table with what the maps hold and writes only what differs, in
make-before-break order per VIP: counters and backends first, then table chunks, then
services; deletions last. What the maps hold is what the previous apply wrote (an unchanged
entry then costs one comparison, no map read), except on the first apply of a process, after a
failed write and after ``current()`` found the maps differing from it (the reconciler's drift
check): then the maps are read back, byte for byte, and whatever no VIP owns is deleted. A VIP
whose writes fail is reported in ``ApplyResult.errors`` and the others go ahead; the failed VIP
may then hold part of its new backends and table under its old service entry (drift, which the
next apply, reading the maps back, fixes).

``current()`` always reads the maps; a VIP they hold byte for byte as the last apply wrote it
is returned as that apply's entry instead of being decoded again.

Planning works on whole arrays: a VIP's backends are packed in one pass, its table converted as
bytes (not slot by slot), and writes are handed to the kernel as packed keys and values, one
``BPF_MAP_UPDATE_BATCH`` per map and slice. A large apply plans the next slice of VIPs while a
second thread writes the previous one (the system calls release the GIL), so planning and the
kernel's map updates run on two CPUs.

Tables: a VIP's Maglev ``lookup`` (indices into its ``backends``) is stored as is, whatever its
length, in chunks of ``Features.chunk_slots`` u16 slots (2016: one 4 KiB kernel allocation; one
chunk holds a Maglev table for up to 20 backends), so ``current()`` returns exactly what was
applied and the reconciler's drift check compares equal. Without a lookup (P2C balancing) each
active backend gets one slot: the kernel has no connection counts to balance on, so new
connections are spread evenly instead.

Feeds for the reconciler: ``connection_counts()`` (new connections per VIP and backend, from
per-CPU counters) and ``outcome_totals()`` (established and failed TCP connects per backend) for
``minuteman.health``. The kernel reports only failures (refused: a RST answered the SYN;
unanswered: the SYN had to be retransmitted), from two raw tracepoints that cost nothing while
connects succeed; once a (VIP, backend) pair has failed, its established connects are its new
connections that have not failed ``OUTCOME_WINDOW`` later (``PairOutcomes``).
"""

from __future__ import annotations

import array
import functools
import gc
import queue
import re
import socket
import struct
import sys
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import chain, repeat
from pathlib import Path

from bpf import loader, maps
from bpf.loader import Features, LoaderError, MapError, MapHandle, SocketLB
from minuteman.dataplane import ApplyResult, Backend, VipEntry, VipKey

__all__ = ["OUTCOME_WINDOW", "EbpfDataplane", "Features", "LoaderError", "MapError", "PairOutcomes", "ebpf_available"]

MAX_TABLE_SIZE = 1 << 20   # slots per VIP; Maglev tables are ~100 per backend
MAX_BACKENDS_PER_VIP = 0xFFFF   # table slots are u16

# struct formats of the layouts in bpf/lib/layout.h (native order, as ctypes lays them out)
SERVICE = struct.Struct("=IIHH")        # lb4_service: id, table_size, backend_count, flags
BACKEND_KEY = struct.Struct("=II")      # lb4_backend_key: service_id, index
BACKEND = struct.Struct("=IHBBI")       # lb4_backend: address, port, flags, pad, counter_id
MAGLEV_KEY = struct.Struct("=II")       # lb4_maglev_key: service_id, chunk
COUNTER_ID = struct.Struct("=I")
BACKEND_VALUE = struct.Struct("=4sHBBI")   # lb4_backend with the address as the 4 bytes inet_pton gives
_UTF16 = "utf-16-le" if sys.byteorder == "little" else "utf-16-be"   # u16 in native order, no BOM
_KEY_TAILS = {name: bytes((number, 0)) for name, number in maps.PROTOCOLS.items()}   # lb4_key protocol, pad
_NON_ZERO = re.compile(rb"[^\x00]")
_pton4 = functools.partial(socket.inet_pton, socket.AF_INET)
OUTCOMES = struct.Struct("=QQ")         # lb4_outcomes: refused, unanswered

# Seconds after which a connect that has not failed counts as established: the latest failure
# signal is the first SYN retransmission, 1 s (the initial RTO) after the SYN.
OUTCOME_WINDOW = 1.5


def ebpf_available() -> tuple[bool, str]:
    """Whether ``--lb auto`` may pick eBPF here, and why (not)."""
    return loader.probe()


def _address(text: str, what: str) -> int:
    try:
        return struct.unpack("=I", socket.inet_pton(socket.AF_INET, text))[0]
    except (OSError, TypeError):
        raise ValueError(f"{what} address {text!r} is not an IPv4 address") from None


def _port(number: int, what: str) -> int:
    if not isinstance(number, int) or not 0 < number < 65536:
        raise ValueError(f"{what} port {number!r} is not in 1-65535")
    return socket.htons(number)


def _backend_ident(backend: Backend) -> tuple[int, int]:
    """(address, port) as the maps hold them; the error names the backend."""
    try:
        return (struct.unpack("=I", socket.inet_pton(socket.AF_INET, backend.ip))[0],
                socket.htons(backend.port) if 0 < backend.port < 65536 else _port(backend.port, ""))
    except (OSError, TypeError, ValueError, OverflowError):
        what = f"backend {backend.ip}:{backend.port}"
        return _address(backend.ip, what), _port(backend.port, what)


@functools.cache
def _indices(count: int) -> bytes:
    """The valid slot values of a table over ``count`` (<= 256) backends, as bytes."""
    return bytes(range(count))


class _Ids:
    """Hands out ids not in ``used``, from 1 up to ``limit`` inclusive, going round from
    ``start``: a freed id comes back only after all the others (a program on another CPU, or a
    socket's remembered peer, may still hold it for a moment)."""

    def __init__(self, used: Iterable[int], limit: int, what: str, start: int = 0) -> None:
        self.used = set(used)
        self.limit = limit
        self.what = what
        # 0: after the highest id in use (an agent that has just adopted the maps)
        start = start or max(self.used, default=0) + 1
        self.next_id = start if 1 <= start <= limit else 1

    def take(self) -> int:
        if len(self.used) >= self.limit:
            raise ValueError(f"no free {self.what} id (limit {self.limit})")
        while self.next_id in self.used:
            self.next_id = self.next_id + 1 if self.next_id < self.limit else 1
        taken = self.next_id
        self.used.add(taken)
        self.next_id = taken + 1 if taken < self.limit else 1
        return taken

    def take_many(self, count: int) -> list[int]:
        """``count`` ids, as ``take`` would hand them out one by one (all or none)."""
        start, end = self.next_id, self.next_id + count
        if end - 1 <= self.limit and self.used.isdisjoint(range(start, end)):
            self.used.update(range(start, end))
            self.next_id = end if end <= self.limit else 1
            return list(range(start, end))
        taken: list[int] = []
        try:
            for _n in range(count):
                taken.append(self.take())
        except ValueError:
            self.used.difference_update(taken)
            raise
        return taken


def table_chunks(lookup: Sequence[int], count: int, per_chunk: int) -> tuple[list[bytes], int]:
    """The nv_maglev values of a lookup (implicit: one slot per backend) and its size, in
    chunks of ``per_chunk`` u16 slots; the tail repeats the table from its start.
    Up to 256 backends an index fits a byte: the tuple converts as bytes and is checked and
    widened to u16 whole, several times faster than element by element."""
    narrow = None
    if count <= 256:
        try:
            narrow = bytes(lookup) if lookup else bytes(range(count))
        except (ValueError, TypeError):
            narrow = None   # the u16 path below names the problem
    if narrow is not None:
        size = len(narrow)
        if size > MAX_TABLE_SIZE:
            raise ValueError(f"lookup of {size} slots: at most {MAX_TABLE_SIZE}")
        outside = narrow.translate(None, _indices(count))
        if outside:
            raise ValueError(f"lookup index {max(outside)} is outside the {count} backends")
        if not size:
            return [], 0
        total = -(-size // per_chunk) * per_chunk
        # Bytes to u16 in native order: latin-1 maps each byte to the character of that
        # number, UTF-16 writes each character as that u16.
        wide = (narrow * (total // size + 1))[:total].decode("latin-1").encode(_UTF16)
        if total == per_chunk:
            return [wide], size
        step = 2 * per_chunk
        return [wide[n:n + step] for n in range(0, 2 * total, step)], size
    try:
        slots = array.array("H", lookup if lookup else range(count))
    except (OverflowError, TypeError):
        raise ValueError(f"lookup holds an index outside the {count} backends") from None
    if len(slots) > MAX_TABLE_SIZE:
        raise ValueError(f"lookup of {len(slots)} slots: at most {MAX_TABLE_SIZE}")
    if slots and max(slots) >= count:
        raise ValueError(f"lookup index {max(slots)} is outside the {count} backends")
    return (_chunks(slots.tobytes(), per_chunk) if slots else []), len(slots)


def _chunks(table: bytes, per_chunk: int) -> list[bytes]:
    """A u16 slot table cut into nv_maglev values; the tail repeats the table from its start."""
    size = per_chunk * 2
    count = -(-len(table) // size)
    padded = (table * (count * size // len(table) + 1))[:count * size]
    return [padded[n * size:(n + 1) * size] for n in range(count)]


class PairOutcomes:
    """Established and failed connects of one (VIP, backend) pair, from two monotonic counters
    sampled at each poll: its new connections (nv_conns) and its failures (nv_outcomes).

    A connect made ``window`` seconds before a poll has either failed by then or is counted
    established: established = connects as of the newest sample at least ``window`` old, minus
    failures now, minus what came before following began (connects still in flight then that
    fail later only make it smaller). Never decreases. A connect the application abandons
    before any answer and before the first SYN retransmission counts as established.
    """

    def __init__(self, now: float, connects: int, failed: int, window: float = OUTCOME_WINDOW) -> None:
        self.window = window
        self.samples: deque[tuple[float, int]] = deque([(now, connects)])
        self.before = connects - failed
        self.established = 0
        self.failed = failed

    def update(self, now: float, connects: int, failed: int) -> tuple[int, int]:
        self.samples.append((now, connects))
        while len(self.samples) > 1 and self.samples[1][0] <= now - self.window:
            self.samples.popleft()
        settled = self.samples[0][1]   # the first sample stands in while none is old enough
        self.established = max(self.established, settled - failed - self.before)
        self.failed = max(self.failed, failed)
        return self.established, self.failed


@dataclass
class _Snapshot:
    """The maps as bytes: services by key, backends by (service, index), chunks by (service, n)."""

    services: dict[bytes, bytes]
    backends: dict[tuple[int, int], bytes]
    tables: dict[tuple[int, int], bytes]

    def by_service(self) -> dict[int, list[tuple[int, bytes]]]:
        members: dict[int, list[tuple[int, bytes]]] = defaultdict(list)
        for (service_id, index), value in self.backends.items():
            members[service_id].append((index, value))
        return members


@dataclass(slots=True)
class _Held:
    """One VIP as the kernel holds it: what this process wrote (``entry`` is what it was
    planned from), or what adoption read from the maps (``entry`` None: compared byte by byte
    before anything of it is trusted)."""

    entry: VipEntry | None
    key: bytes                    # nv_services key
    service_id: int
    service: bytes                # nv_services value
    indices: Sequence[int]        # its backends' indices, in the order of ``values``
    values: bytes                 # nv_backends values, packed back to back
    counters: list[int]           # their counter ids
    chunks: dict[int, bytes]      # nv_maglev values by chunk number

    def value_list(self) -> list[bytes]:
        return [self.values[n:n + BACKEND_VALUE.size] for n in range(0, len(self.values), BACKEND_VALUE.size)]

    def backend_keys(self) -> bytes:
        return _backend_keys(self.service_id, self.indices)

    def chunk_keys(self, numbers: Iterable[int] | None = None) -> list[bytes]:
        return [MAGLEV_KEY.pack(self.service_id, n) for n in (self.chunks if numbers is None else numbers)]


def _member_indices(entry: VipEntry) -> Sequence[int]:
    """nv_backends indices of a VIP's backends: active ones by position, draining ones after
    ``DRAINING_INDEX``."""
    if not entry.draining:
        return range(len(entry.backends))
    return [*range(len(entry.backends)), *range(maps.DRAINING_INDEX, maps.DRAINING_INDEX + len(entry.draining))]


def _duplicate(members: Sequence[Backend]) -> ValueError:
    """The error for a VIP listing one backend twice, naming the first repeated one."""
    seen: set[Backend] = set()
    for backend in members:
        if backend in seen:
            break
        seen.add(backend)
    return ValueError(f"backend {backend.ip}:{backend.port} is listed twice (backends and draining must be disjoint)")


def _backend_values(addresses: list[bytes], ports: list[int], counters: Sequence[int], active: int | None = None) -> bytes:
    """lb4_backend values packed back to back, built a field at a time over all of them (no
    object per backend); those from position ``active`` on are draining."""
    record = BACKEND_VALUE.size // 4    # u32 words per value: address, port + flags + pad, counter id
    packed = bytearray(BACKEND_VALUE.size * len(addresses))
    words = memoryview(packed).cast("I")
    words[0::record] = array.array("I", b"".join(addresses))
    network_ports = array.array("H", ports)
    if sys.byteorder == "little":
        network_ports.byteswap()
    memoryview(packed).cast("H")[2::2 * record] = network_ports
    words[2::record] = array.array("I", counters)
    if active is not None:
        memoryview(packed)[BACKEND_VALUE.size * active + 6::BACKEND_VALUE.size] = bytes(
            [maps.BACKEND_DRAINING]) * (len(addresses) - active)
    return bytes(packed)


def _backend_keys(service_id: int, indices: Sequence[int]) -> bytes:
    """nv_backends keys {service_id, index} for ``indices``, packed back to back."""
    keys = array.array("I", [service_id]) * (2 * len(indices))
    keys[1::2] = array.array("I", indices)
    return keys.tobytes()


@dataclass
class _Writes:
    """One map's planned writes: per VIP, its keys and values packed back to back."""

    handle: MapHandle
    parts: list[tuple[VipKey, bytes, bytes]] = field(default_factory=list)

    def add(self, vip: VipKey, keys: bytes, values: bytes) -> None:
        self.parts.append((vip, keys, values))


@dataclass
class _Slice:
    """The writes of some VIPs, in make-before-break order: counters (and their outcomes
    cleared), backends, table chunks, services."""

    counters: _Writes
    backends: _Writes
    tables: _Writes
    services: _Writes
    handed_out: list[int] = field(default_factory=list)   # counter ids newly handed out


class _Writer:
    """Writes slices on a thread of its own while the caller plans the next slice: the batch
    system calls release the GIL, so planning (Python) and writing (kernel) use two CPUs.
    Started only once a table is big enough to fill a slice."""

    def __init__(self, write: Callable[[_Slice], int]) -> None:
        self.write = write
        self.written = 0
        self.failure: BaseException | None = None
        self.queue: queue.SimpleQueue[_Slice | None] = queue.SimpleQueue()
        self.thread: threading.Thread | None = None
        self.switch_interval = 0.0

    def submit(self, batch: _Slice, background: bool) -> None:
        if background and self.thread is None:
            # The writer needs the GIL back after each system call; at the default 5 ms
            # switch interval it would mostly wait for the planner.
            self.switch_interval = sys.getswitchinterval()
            sys.setswitchinterval(min(self.switch_interval, 0.0002))
            self.thread = threading.Thread(target=self._run, name="ebpf-apply-writer", daemon=True)
            self.thread.start()
        if self.thread is None:
            self.written += self.write(batch)
        else:
            self.queue.put(batch)

    def _run(self) -> None:
        while (batch := self.queue.get()) is not None:
            if self.failure is None:
                try:
                    self.written += self.write(batch)
                except BaseException as exc:   # handed to the caller by finish()
                    self.failure = exc

    def finish(self) -> int:
        if self.thread is not None:
            self.queue.put(None)
            self.thread.join()
            self.thread = None
            sys.setswitchinterval(self.switch_interval)
        if self.failure is not None:
            raise self.failure
        return self.written


@dataclass
class _Stray:
    """What adoption found that no VIP owns, to delete: services of a key no VIP maps to,
    backends and chunks of a service id no service has (a failed write, a crash)."""

    services: list[bytes] = field(default_factory=list)
    service_ids: list[int] = field(default_factory=list)
    backends: list[bytes] = field(default_factory=list)     # packed nv_backends keys
    tables: list[bytes] = field(default_factory=list)
    counters: list[int] = field(default_factory=list)
    removed: set[VipKey] = field(default_factory=set)


class EbpfDataplane:
    """The socket LB of one node's cgroup. Construction loads and attaches (replacing a previous
    agent's programs without a gap) and adopts whatever the pinned maps hold.

    Raises ``LoaderError`` when the programs cannot be loaded or attached; after that no method
    raises for a bad VIP: errors come back per VIP in ``ApplyResult``.
    """

    name = "ebpf"
    SLICE = 256   # VIPs whose writes go to the writer thread at a time

    def __init__(self, cgroup_path: str | Path, pin_dir: str | Path, *, features: Features = Features(),
                 attach: bool = True, allow_root_cgroup: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cgroup_path = Path(cgroup_path)
        self.clock = clock
        self.pin_dir = Path(pin_dir)
        self.features = features
        if attach:
            # Refuse a wrong cgroup before compiling anything or creating pins.
            loader.check_cgroup(self.cgroup_path, allow_root_cgroup)
            self._lb = SocketLB.load(self.pin_dir, features)
            try:
                self._lb.attach(self.cgroup_path, allow_root=allow_root_cgroup)
            except BaseException:
                self._lb.close()
                raise
        else:
            self._lb = SocketLB.open(self.pin_dir, features)
        self._maps = self._lb.maps
        self._zero_count = bytes(self._maps["nv_conns"].value_size)
        # Free counter ids that may hold counts (see _dirty); maps made just now hold none.
        self._dirty_counters: set[int] | None = set() if self._lb.created else None
        self.last_writes = 0   # map elements written or deleted by the last apply
        # What the maps hold per VIP, as the last apply wrote it; None until an apply has
        # read the maps back (the first one, after a failed write, after drift). While set, an
        # unchanged entry costs one comparison and the maps are not read.
        self._held: dict[VipKey, _Held] | None = None
        self._service_ids = _Ids((), 2**32 - 1, "service")
        self._counter_ids = _Ids((), features.max_backends - 1, "backend counter")
        # Passive health: counter id → backend, the followed pairs, and what pairs that went away
        # had counted, so totals per backend stay monotonic when a pair's counter goes away or
        # its id is reused.
        self._counter_backend: dict[int, Backend] = {}
        self._pairs: dict[int, PairOutcomes] = {}
        self._outcomes_retired: dict[Backend, tuple[int, int]] = {}
        # Counter ids in nv_outcomes that no backend in the maps holds (pairs removed before a
        # restart): looked for once, not at every poll, until an apply hands out ids again.
        self._unattributed: set[int] = set()
        self._next_ids = (0, 0)     # where the service and counter id searches resume (_Ids)
        # Failures the kernel counted before this agent: old news, not fed to health again (a
        # restarted agent would otherwise take out a backend for failures long past).
        self._failed_before_start = {COUNTER_ID.unpack(k)[0]: sum(OUTCOMES.unpack(v))
                                     for k, v in self._maps["nv_outcomes"].items()}

    # -- Dataplane ------------------------------------------------------------------------------
    def apply(self, table: dict[VipKey, VipEntry]) -> ApplyResult:
        """Make the maps hold exactly ``table``. Idempotent: a second call writes nothing.

        After an apply that wrote everything it planned, the next one trusts that the maps hold
        what it wrote and compares entries only; the maps are read back (and compared byte for
        byte) on the first apply, after a failed write, and after ``current()`` found them
        different from what was written (the reconciler's drift check)."""
        result = ApplyResult()
        errors = result.errors
        if self._held is None:
            snap = self._snapshot()
            held, stray = self._adopt(snap)
            service_ids = _Ids((SERVICE.unpack(v)[0] for v in snap.services.values()), 2**32 - 1, "service",
                               self._next_ids[0])
            counter_ids = _Ids((BACKEND.unpack(v)[4] for v in snap.backends.values()),
                               self.features.max_backends - 1, "backend counter", self._next_ids[1])
        else:
            held, stray = self._held, _Stray()
            service_ids, counter_ids = self._service_ids, self._counter_ids
        followed = {key for key, _value in self._maps["nv_outcomes"].items()}   # small: failing pairs only
        write_errors: dict[VipKey, str] = {}
        writer = _Writer(functools.partial(self._write_slice, followed=followed, errors=write_errors))
        # What the maps hold after this apply. Starts as a copy (which reuses the keys' hashes:
        # VipKey's is Python code), so unchanged VIPs cost no dict writes.
        now: dict[VipKey, _Held] = dict(held)
        # Per changed VIP: backend and chunk keys it no longer uses, counter ids it let go.
        drops: list[tuple[VipKey, bytes, list[bytes], list[int]]] = []
        health_state = bool(self._pairs or self._failed_before_start or self._counter_backend or self._unattributed)
        # Planning allocates a few small containers per VIP and frees none: the collector would
        # only walk the whole heap (every VipEntry and Backend of the table) several times over.
        collecting = gc.isenabled()
        gc.disable()
        try:
            batch, planned = self._new_slice(), 0
            pending: list[tuple[VipKey, VipEntry]] = []   # new VIPs, planned a slice at a time
            for key, entry in table.items():
                old = held.get(key) if held else None
                if old is None:
                    pending.append((key, entry))
                    if len(pending) < self.SLICE:
                        continue
                    self._plan_new(pending, batch, now, errors, service_ids, counter_ids, health_state)
                    pending = []
                elif old.entry is not None and (old.entry is entry or old.entry == entry):
                    continue
                else:
                    self._plan_changed(key, entry, old, batch, now, drops, errors, counter_ids, health_state)
                    planned += 1
                    if planned < self.SLICE:
                        continue
                writer.submit(batch, background=True)
                batch, planned = self._new_slice(), 0
            self._plan_new(pending, batch, now, errors, service_ids, counter_ids, health_state)
            writer.submit(batch, background=False)
        except BaseException:
            self._held = self._dirty_counters = None   # part may be written: read the maps back next time
            raise
        finally:
            if collecting:
                gc.enable()
            try:
                writes = writer.finish()
            except BaseException:
                self._held = self._dirty_counters = None
                raise
        errors.update(write_errors)

        result.programmed = set(table) - errors.keys() if errors else set(table)
        removed = [(key, held[key]) for key in held.keys() - table.keys()]
        result.removed = {key for key, _old in removed} | stray.removed
        for key, _old in removed:
            del now[key]
        if errors:
            drops = [drop for drop in drops if drop[0] not in errors]
        writes += self._delete(self._maps["nv_services"], [old.key for _key, old in removed] + stray.services)
        writes += self._delete(self._maps["nv_maglev"], [k for _key, old in removed for k in old.chunk_keys()]
                               + [k for drop in drops for k in drop[2]] + stray.tables)
        writes += self._delete_packed(self._maps["nv_backends"], b"".join(
            [old.backend_keys() for _key, old in removed] + [drop[1] for drop in drops] + stray.backends))
        for _key, old in removed:
            service_ids.used.discard(old.service_id)
            counter_ids.used.difference_update(old.counters)
        for drop in drops:
            counter_ids.used.difference_update(drop[3])
        counter_ids.used.difference_update(stray.counters)
        if self._dirty_counters is not None:
            for _key, old in removed:
                self._dirty_counters.update(old.counters)
            for drop in drops:
                self._dirty_counters.update(drop[3])
            self._dirty_counters.update(stray.counters)
        service_ids.used.difference_update(stray.service_ids)
        self.last_writes = writes
        self._next_ids = (service_ids.next_id, counter_ids.next_id)
        if write_errors:
            # A write failed: the maps may hold part of it, a counter may not have been zeroed.
            self._held = self._dirty_counters = None
        else:
            self._held, self._service_ids, self._counter_ids = now, service_ids, counter_ids
        return result

    def current(self) -> dict[VipKey, VipEntry]:
        """The VIP table the maps hold (adopted as is after a restart): equal to what was applied."""
        snap = self._snapshot()
        members = snap.by_service()
        chunk_slots = self.features.chunk_slots
        held = self._held or {}
        out: dict[VipKey, VipEntry] = {}
        for key_bytes, value in snap.services.items():
            key = self._vip_key(key_bytes)
            service_id, table_size, _count, flags = SERVICE.unpack(value)
            group = sorted(members.get(service_id, ()))
            vip = held.get(key)
            if (vip is not None and vip.entry is not None and vip.service == value and vip.key == key_bytes
                    and b"".join(v for _i, v in group) == vip.values and [i for i, _v in group] == list(vip.indices)
                    and all(snap.tables.get((service_id, n)) == chunk for n, chunk in vip.chunks.items())):
                # Byte for byte what the last apply wrote from this entry: it decodes to the entry.
                out[key] = vip.entry
                continue
            active, draining = [], []
            for index, backend in group:
                (draining if index >= maps.DRAINING_INDEX else active).append(self._public_backend(backend))
            chunks = -(-table_size // chunk_slots)
            raw = b"".join(snap.tables.get((service_id, c), b"") for c in range(chunks))
            lookup = () if flags & maps.SERVICE_IMPLICIT_TABLE else tuple(array.array("H", raw[:table_size * 2]))
            out[key] = VipEntry(key=key, backends=tuple(active), lookup=lookup, draining=tuple(draining))
        if self._held is not None and (len(held) != len(out) or any(
                vip.entry != out.get(key) or snap.services.get(vip.key) != vip.service for key, vip in held.items())):
            self._held = None   # drifted: the next apply reads the maps back and repairs
        return out

    def connection_counts(self) -> dict[tuple[VipKey, Backend], int]:
        """New connections per (VIP, backend), summed over CPUs, since the backend joined the VIP."""
        snap = self._snapshot(tables=False)
        vip_by_service = {SERVICE.unpack(v)[0]: self._vip_key(k) for k, v in snap.services.items()}
        conns = self._maps["nv_conns"]
        counts: dict[tuple[VipKey, Backend], int] = {}
        for (service_id, _index), value in snap.backends.items():
            vip = vip_by_service.get(service_id)
            raw = conns.lookup(COUNTER_ID.pack(BACKEND.unpack(value)[4]))
            if vip is not None and raw is not None:
                counts[(vip, self._public_backend(value))] = sum(array.array("Q", raw))
        return counts

    def outcome_totals(self) -> dict[Backend, tuple[int, int]]:
        """(established, failed) TCP connects through any VIP, per backend, monotonic; only
        backends that have failed at least once (for ``minuteman.health``). Failures show at
        once, established connects ``OUTCOME_WINDOW`` after a poll that saw them made. Cheap:
        reads the small nv_outcomes map and one counter per pair in it."""
        now = self.clock()
        current = {COUNTER_ID.unpack(k)[0]: OUTCOMES.unpack(v) for k, v in self._maps["nv_outcomes"].items()}
        for counter_id in [c for c in self._pairs if c not in current]:
            self._retire_outcomes(counter_id)
        unknown = {c for c in current if c not in self._counter_backend and c not in self._unattributed}
        if unknown:
            # Which backend a failing pair's counter belongs to is looked up when it first
            # fails (apply does not keep it for 100,000 pairs); a reused id is forgotten by apply.
            for value in self._backend_values():
                counter_id = BACKEND.unpack(value)[4]
                if counter_id in unknown:
                    self._counter_backend[counter_id] = self._public_backend(value)
            self._unattributed.update(c for c in unknown if c not in self._counter_backend)
        totals = dict(self._outcomes_retired)
        conns = self._maps["nv_conns"]
        for counter_id, (refused, unanswered) in current.items():
            backend = self._counter_backend.get(counter_id)
            if backend is None:
                continue
            raw = conns.lookup(COUNTER_ID.pack(counter_id))
            connects = sum(array.array("Q", raw)) if raw else 0
            failed = refused + unanswered - self._failed_before_start.get(counter_id, 0)
            pair = self._pairs.get(counter_id)
            if pair is None:
                pair = self._pairs[counter_id] = PairOutcomes(now, connects, failed)
            established, failed = pair.update(now, connects, failed)
            ok, bad = totals.get(backend, (0, 0))
            totals[backend] = (ok + established, bad + failed)
        return totals

    def _forget_counters(self, counter_ids: list[int]) -> None:
        """Counter ids handed out again: what they counted is retired, their backend forgotten."""
        for counter_id in counter_ids:
            if counter_id in self._pairs or counter_id in self._failed_before_start:
                self._retire_outcomes(counter_id)
            self._counter_backend.pop(counter_id, None)
        self._unattributed.difference_update(counter_ids)

    def _backend_values(self) -> Iterable[bytes]:
        """Every nv_backends value: from what the last apply wrote, else read from the map."""
        if self._held is not None:
            return (value for vip in self._held.values() for value in vip.value_list())
        return (value for _key, value in self._maps["nv_backends"].items())

    def _retire_outcomes(self, counter_id: int) -> None:
        """Fold what a counter id counted into its backend's base before the id goes or is reused."""
        self._failed_before_start.pop(counter_id, None)
        pair = self._pairs.pop(counter_id, None)
        backend = self._counter_backend.get(counter_id)
        if pair and backend is not None:
            ok, bad = self._outcomes_retired.get(backend, (0, 0))
            self._outcomes_retired[backend] = (ok + pair.established, bad + pair.failed)

    def close(self, keep_kernel_state: bool = True) -> None:
        """Release this process's handles. By default programs stay attached and maps pinned, so
        VIPs keep working and the next agent adopts them; ``keep_kernel_state=False`` tears down."""
        self._lb.close()
        if not keep_kernel_state:
            loader.teardown(self.cgroup_path, self.pin_dir)

    def detach_all(self) -> None:
        """Detach every socket-LB program from the cgroup and remove the pins (maps and programs)."""
        self.close(keep_kernel_state=False)

    def attached(self) -> list[str]:
        """Attach points with one of our programs on the cgroup right now, then the tracepoints
        with one of our links."""
        return (sorted({p.attach_point for p in loader.attached_programs(self.cgroup_path)})
                + loader.attached_tracepoints(self.pin_dir))

    # -- map form ---------------------------------------------------------------------------------
    def _plan_new(self, pending: list[tuple[VipKey, VipEntry]], batch: _Slice, now: dict[VipKey, _Held],
                  errors: dict[VipKey, str], service_ids: _Ids, counter_ids: _Ids, health_state: bool) -> None:
        """VIPs the maps hold nothing of, in map form and added to ``batch`` whole: their
        backends packed in one pass over all of them (per-VIP work is the table and slicing)."""
        per_chunk = self.features.chunk_slots
        ready = []
        # Tables of up to 256 backends that fit one chunk (Maglev's for up to 20 backends):
        # indices as bytes, checked and repeated to a chunk here, widened to u16 for the whole
        # slice at once; any other table goes through table_chunks.
        narrow: list[bytes] = []
        one_chunk: list[int] = []    # positions in ready of those tables
        for key, entry in pending:
            try:
                key_bytes = self._key(key)
                count = len(entry.backends)
                if count > MAX_BACKENDS_PER_VIP:
                    raise ValueError(f"{count} backends: at most {MAX_BACKENDS_PER_VIP} per VIP")
                lookup = entry.lookup
                try:
                    table = bytes(lookup) if count <= 256 and 0 < len(lookup) <= per_chunk else None
                except (ValueError, TypeError):
                    table = None
                if table is None:
                    chunks, slots = table_chunks(lookup, count, per_chunk)
                else:
                    outside = table.translate(None, _indices(count))
                    if outside:
                        raise ValueError(f"lookup index {max(outside)} is outside the {count} backends")
                    chunks, slots = [], len(table)
                    one_chunk.append(len(ready))
                    narrow.append((table * (per_chunk // slots + 1))[:per_chunk])
            except ValueError as exc:
                errors[key] = str(exc)
                continue
            ready.append((key, entry, key_bytes, chunks, slots,
                          entry.backends + entry.draining if entry.draining else entry.backends))
        if not ready:
            return
        if narrow:
            wide = b"".join(narrow).decode("latin-1").encode(_UTF16)
            step = 2 * per_chunk
            for n, position in enumerate(one_chunk):
                ready[position][3].append(wide[n * step:(n + 1) * step])
        flat = [b for vip in ready for b in vip[5]]
        try:
            ports = [b.port for b in flat]
            if ports and not 0 < min(ports) <= max(ports) < 65536:
                raise ValueError("port")
            addresses = list(map(_pton4, [b.ip for b in flat]))
            service_list = service_ids.take_many(len(ready))
            try:
                counters = counter_ids.take_many(len(flat))
            except ValueError:
                service_ids.used.difference_update(service_list)
                raise
        except (OSError, TypeError, ValueError, OverflowError):
            for key, entry, key_bytes, _chunks, _slots, _members in ready:   # VIP by VIP: errors name their VIP
                service_id = service_ids.take()
                try:
                    vip, fresh = self._encode(entry, key_bytes, service_id, None, counter_ids)
                except ValueError as exc:
                    service_ids.used.discard(service_id)
                    errors[key] = str(exc)
                    continue
                now[key] = vip
                batch.handed_out += fresh
                self._from_zero(key, fresh, batch)
                self._add_new(key, vip, batch)
                if health_state:
                    self._forget_counters(fresh)
            return
        value_blob = _backend_values(addresses, ports, counters)
        member_indices = [_member_indices(vip[1]) for vip in ready]
        keys = array.array("I", bytes(8 * len(flat)))
        keys[0::2] = array.array("I", chain.from_iterable(map(repeat, service_list, [len(vip[5]) for vip in ready])))
        keys[1::2] = array.array("I", chain.from_iterable(member_indices))
        key_blob = keys.tobytes()
        # No backend twice in the whole slice: none twice in a VIP (else each VIP is checked).
        unique = len(set(zip(addresses, ports, strict=True))) == len(flat)
        pack_service, pack_chunk_key = SERVICE.pack, MAGLEV_KEY.pack
        key_size, value_size = BACKEND_KEY.size, BACKEND_VALUE.size
        batch.handed_out += counters
        dirty = self._dirty()
        add_backends = batch.backends.parts.append
        add_tables, add_services = batch.tables.parts.append, batch.services.parts.append
        start = 0
        for (key, entry, key_bytes, chunks, slots, members), service_id, indices in zip(
                ready, service_list, member_indices, strict=True):
            end = start + len(members)
            if not unique and len(set(zip(addresses[start:end], ports[start:end], strict=True))) != end - start:
                service_ids.used.discard(service_id)
                counter_ids.used.difference_update(counters[start:end])
                errors[key] = str(_duplicate(members))
                start = end
                continue
            count = len(entry.backends)
            values = value_blob[value_size * start:value_size * end]
            if entry.draining:
                values = _backend_values(addresses[start:end], ports[start:end], counters[start:end], count)
            service = pack_service(service_id, slots, count, maps.SERVICE_IMPLICIT_TABLE if slots and not entry.lookup else 0)
            now[key] = _Held(entry, key_bytes, service_id, service, indices, values, counters[start:end],
                             {0: chunks[0]} if len(chunks) == 1 else dict(enumerate(chunks)))
            if end > start:
                if dirty:
                    self._from_zero(key, counters[start:end], batch)
                add_backends((key, key_blob[key_size * start:key_size * end], values))
            if len(chunks) == 1:
                add_tables((key, pack_chunk_key(service_id, 0), chunks[0]))
            elif chunks:
                add_tables((key, b"".join(pack_chunk_key(service_id, n) for n in range(len(chunks))), b"".join(chunks)))
            add_services((key, key_bytes, service))
            start = end
        if health_state:
            self._forget_counters(counters)

    def _add_new(self, key: VipKey, vip: _Held, batch: _Slice) -> None:
        """The writes of a VIP the maps hold nothing of (its counters aside)."""
        if vip.values:
            batch.backends.parts.append((key, vip.backend_keys(), vip.values))
        if len(vip.chunks) == 1:
            batch.tables.parts.append((key, MAGLEV_KEY.pack(vip.service_id, 0), vip.chunks[0]))
        elif vip.chunks:
            batch.tables.parts.append((key, b"".join(vip.chunk_keys()), b"".join(vip.chunks.values())))
        batch.services.parts.append((key, vip.key, vip.service))

    def _from_zero(self, key: VipKey, counter_ids: list[int], batch: _Slice) -> None:
        """Counter ids handed out to ``key`` start from zero (new connections, outcomes). Only
        those that may have counted since the maps were made are written: most never have."""
        dirty = self._dirty()
        stale = [c for c in counter_ids if c in dirty] if dirty else ()
        if stale:
            batch.counters.parts.append((key, array.array("I", stale).tobytes(), self._zero_count * len(stale)))
            dirty.difference_update(stale)

    def _dirty(self) -> set[int]:
        """Free counter ids whose counter may not be zero: non-zero when first needed (none if
        this process made the maps), and every id given up since."""
        if self._dirty_counters is None:
            keys, values = self._maps["nv_conns"].read_packed()
            size, dirty = len(self._zero_count), set()
            found = _NON_ZERO.search(values)
            while found:
                record = found.start() // size
                dirty.add(COUNTER_ID.unpack_from(keys, record * COUNTER_ID.size)[0])
                found = _NON_ZERO.search(values, (record + 1) * size)
            self._dirty_counters = dirty
        return self._dirty_counters

    def _plan_changed(self, key: VipKey, entry: VipEntry, old: _Held, batch: _Slice, now: dict[VipKey, _Held],
                      drops: list[tuple[VipKey, bytes, list[bytes], list[int]]], errors: dict[VipKey, str],
                      counter_ids: _Ids, health_state: bool) -> None:
        """A VIP the maps hold (as written, or adopted): only what differs is written."""
        known = {value[:6]: counter for value, counter in zip(old.value_list(), old.counters, strict=True)}
        try:
            vip, fresh = self._encode(entry, old.key, old.service_id, known, counter_ids)
        except ValueError as exc:
            errors[key] = str(exc)   # the kernel keeps what it had for this VIP (still in ``now``)
            return
        now[key] = vip
        if fresh:
            batch.handed_out += fresh
            self._from_zero(key, fresh, batch)
            if health_state:
                self._forget_counters(fresh)
        self._diff(key, old, vip, batch, drops)

    def _encode(self, entry: VipEntry, key: bytes, service_id: int, known: dict[bytes, int] | None,
                counter_ids: _Ids) -> tuple[_Held, list[int]]:
        """One VIP in map form, and the counter ids newly handed out for it. ``known``: counter
        ids its backends (address and port, as stored) already have; None for a new VIP.
        Raises ValueError naming what is wrong with the entry."""
        count = len(entry.backends)
        if count > MAX_BACKENDS_PER_VIP:
            raise ValueError(f"{count} backends: at most {MAX_BACKENDS_PER_VIP} per VIP")
        chunks, slots = table_chunks(entry.lookup, count, self.features.chunk_slots)
        members = entry.backends + entry.draining if entry.draining else entry.backends
        try:
            ports = [b.port for b in members]
            if ports and not 0 < min(ports) <= max(ports) < 65536:
                raise ValueError("port")
            addresses = list(map(_pton4, [b.ip for b in members]))
        except (OSError, TypeError, ValueError, OverflowError):
            for backend in members:
                _backend_ident(backend)   # raises, naming the backend
            raise
        if len(set(zip(addresses, ports, strict=True))) != len(members):
            raise _duplicate(members)
        if known is None:
            counters = fresh = counter_ids.take_many(len(members))
        else:
            counters, fresh = [], []
            for address, port in zip(addresses, ports, strict=True):
                counter_id = known.get(address + port.to_bytes(2, "big"))
                if counter_id is None:
                    counter_id = counter_ids.take()
                    fresh.append(counter_id)
                counters.append(counter_id)
        pack, htons = BACKEND_VALUE.pack, socket.htons
        values = [pack(a, htons(p), 0, 0, c) for a, p, c in zip(addresses, ports, counters, strict=True)]
        if entry.draining:
            values[count:] = [pack(a, htons(p), maps.BACKEND_DRAINING, 0, c) for a, p, c in
                              zip(addresses[count:], ports[count:], counters[count:], strict=True)]
        flags = maps.SERVICE_IMPLICIT_TABLE if not entry.lookup and slots else 0
        return _Held(entry, key, service_id, SERVICE.pack(service_id, slots, count, flags), _member_indices(entry),
                     b"".join(values), counters, dict(enumerate(chunks))), fresh

    def _diff(self, key: VipKey, old: _Held, vip: _Held, batch: _Slice,
              drops: list[tuple[VipKey, bytes, list[bytes], list[int]]]) -> None:
        """Writes for a VIP the kernel already holds: only the elements that differ."""
        before = dict(zip(old.indices, old.value_list(), strict=True))
        changed = [(index, value) for index, value in zip(vip.indices, vip.value_list(), strict=True)
                   if before.pop(index, None) != value]
        if changed:
            batch.backends.add(key, _backend_keys(vip.service_id, [i for i, _v in changed]),
                               b"".join(v for _i, v in changed))
        chunks = [n for n, value in vip.chunks.items() if old.chunks.get(n) != value]
        if chunks:
            batch.tables.add(key, b"".join(vip.chunk_keys(chunks)), b"".join(vip.chunks[n] for n in chunks))
        if old.service != vip.service:
            batch.services.add(key, vip.key, vip.service)
        drops.append((key, _backend_keys(old.service_id, list(before)),
                      old.chunk_keys([n for n in old.chunks if n not in vip.chunks]),
                      list(set(old.counters).difference(vip.counters))))

    def _adopt(self, snap: _Snapshot) -> tuple[dict[VipKey, _Held], _Stray]:
        """What the maps hold, per VIP, and what no VIP owns (left by a failed write or a crash)."""
        members = snap.by_service()
        tables: dict[int, dict[int, bytes]] = defaultdict(dict)
        for (service_id, number), value in snap.tables.items():
            tables[service_id][number] = value
        held: dict[VipKey, _Held] = {}
        stray = _Stray()
        for key_bytes, value in snap.services.items():
            service_id = SERVICE.unpack(value)[0]
            vip = self._vip_key(key_bytes)
            try:
                canonical = self._key(vip) == key_bytes
            except ValueError:
                canonical = False
            if not canonical or vip in held:
                stray.services.append(key_bytes)
                stray.service_ids.append(service_id)
                stray.removed.add(vip)
                continue
            group = sorted(members.pop(service_id, ()))
            held[vip] = _Held(None, key_bytes, service_id, value, [i for i, _v in group], b"".join(v for _i, v in group),
                              [BACKEND.unpack(v)[4] for _i, v in group], tables.pop(service_id, {}))
        for service_id, group in members.items():
            stray.backends.append(_backend_keys(service_id, [i for i, _v in group]))
            stray.counters += [BACKEND.unpack(v)[4] for _i, v in group]
        stray.tables = [MAGLEV_KEY.pack(service_id, n) for service_id, chunks in tables.items() for n in chunks]
        return held, stray

    def _new_slice(self) -> _Slice:
        return _Slice(_Writes(self._maps["nv_conns"]), _Writes(self._maps["nv_backends"]),
                      _Writes(self._maps["nv_maglev"]), _Writes(self._maps["nv_services"]))

    @staticmethod
    def _key(key: VipKey) -> bytes:
        tail = _KEY_TAILS.get(key.protocol)
        if tail is None:
            raise ValueError(f"protocol {key.protocol!r}: use tcp or udp")
        try:
            if 0 < key.port < 65536:
                return _pton4(key.address) + key.port.to_bytes(2, "big") + tail
        except (OSError, TypeError, AttributeError):
            pass
        return bytes(maps.Lb4Key(_address(key.address, "VIP"), _port(key.port, "VIP"), maps.PROTOCOLS[key.protocol], 0))

    @staticmethod
    # Every repair (each 5 s) reads the whole table back: the same few thousand keys decode to
    # the same immutable values, so each is decoded once.
    @functools.lru_cache(maxsize=1 << 18)
    def _vip_key(key_bytes: bytes) -> VipKey:
        key = maps.Lb4Key.from_buffer_copy(key_bytes)
        return VipKey(maps.from_be32(key.address), maps.from_be16(key.port),
                      maps.PROTOCOL_NAMES.get(key.protocol, str(key.protocol)))  # type: ignore[arg-type]

    @staticmethod
    @functools.lru_cache(maxsize=1 << 18)
    def _public_backend(value: bytes) -> Backend:
        address, port = BACKEND.unpack(value)[:2]
        return Backend(maps.from_be32(address), maps.from_be16(port))

    # -- kernel I/O -------------------------------------------------------------------------------
    def _snapshot(self, tables: bool = True) -> _Snapshot:
        return _Snapshot(
            services=dict(self._maps["nv_services"].items()),
            backends={BACKEND_KEY.unpack(k): v for k, v in self._maps["nv_backends"].items()},
            tables={MAGLEV_KEY.unpack(k): v for k, v in self._maps["nv_maglev"].items()} if tables else {},
        )

    def _write_slice(self, batch: _Slice, followed: set[bytes], errors: dict[VipKey, str]) -> int:
        written = self._write(batch.counters, errors)
        if followed:
            reused = [key for key in map(COUNTER_ID.pack, batch.handed_out) if key in followed]
            written += self._delete(self._maps["nv_outcomes"], reused)
        return written + sum(self._write(writes, errors) for writes in (batch.backends, batch.tables, batch.services))

    @staticmethod
    def _write(batch: _Writes, errors: dict[VipKey, str]) -> int:
        live = [part for part in batch.parts if part[0] not in errors] if errors else batch.parts
        if not live:
            return 0
        handle = batch.handle
        keys = b"".join(part[1] for part in live)
        try:
            handle.update_packed(keys, b"".join(part[2] for part in live))
            return len(keys) // handle.key_size
        except MapError:
            pass
        written = 0
        for vip, keys, values in live:   # find out which VIPs the failure belongs to
            if vip in errors:
                continue
            try:
                handle.update_packed(keys, values)
                written += len(keys) // handle.key_size
            except MapError as exc:
                errors[vip] = f"{handle.spec.name}: {exc}"
        return written

    @staticmethod
    def _delete(handle: MapHandle, keys: list[bytes]) -> int:
        if keys:
            handle.delete_batch(keys)
        return len(keys)

    @staticmethod
    def _delete_packed(handle: MapHandle, keys: bytes) -> int:
        size = handle.key_size
        return EbpfDataplane._delete(handle, [keys[n:n + size] for n in range(0, len(keys), size)])
