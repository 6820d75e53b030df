"""The eBPF socket load balancer: the real ``Dataplane`` over ``bpf/`` (cgroup sock_addr programs).

    VipEntry table ──► map form (service, backends, table chunks) ──diff──► pinned maps ◄── programs
                                                   ▲                              │
                                                   └─── snapshot (batch read) ◄───┘

``apply`` reads the maps back, compares byte for byte with the desired map form and writes only
what differs, batched, in make-before-break order: counters and backends first, then table
chunks, then services; deletions last. A VIP whose writes fail is reported in
``ApplyResult.errors`` and the others go ahead; the failed VIP may then hold part of its new
backends and table under its old service entry (drift, which the next apply or repair fixes).

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
import socket
import struct
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
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


@dataclass
class _Plan:
    """One VIP in map form, as bytes ready to compare with a snapshot."""

    new_counters: list[int] = field(default_factory=list)
    counters: dict[int, Backend] = field(default_factory=dict)    # counter id → backend
    backends: dict[tuple[int, int], bytes] = field(default_factory=dict)
    chunks: list[bytes] = field(default_factory=list)
    service: bytes = b""


@dataclass
class _Writes:
    """One map's planned writes, each tagged with the VIP it belongs to."""

    handle: MapHandle
    vips: list[VipKey] = field(default_factory=list)
    keys: list[bytes] = field(default_factory=list)
    values: list[bytes] = field(default_factory=list)

    def add(self, vip: VipKey, key: bytes, value: bytes) -> None:
        self.vips.append(vip)
        self.keys.append(key)
        self.values.append(value)


class EbpfDataplane:
    """The socket LB of one node's cgroup. Construction loads and attaches (replacing a previous
    agent's programs without a gap) and adopts whatever the pinned maps hold.

    Raises ``LoaderError`` when the programs cannot be loaded or attached; after that no method
    raises for a bad VIP: errors come back per VIP in ``ApplyResult``.
    """

    name = "ebpf"

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
        self.last_writes = 0   # map elements written or deleted by the last apply
        # The last plan per VIP, reused while its entry is unchanged and the kernel still holds
        # its backends exactly: saves re-encoding 10,000 tables when one VIP changes.
        self._plans: dict[VipKey, tuple[VipEntry, int, _Plan]] = {}
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
        """Make the maps hold exactly ``table``. Idempotent: a second call writes nothing."""
        result = ApplyResult()
        snap = self._snapshot()
        members = snap.by_service()
        service_ids = _Ids((SERVICE.unpack(v)[0] for v in snap.services.values()), 2**32 - 1, "service",
                           self._next_ids[0])
        counter_ids = _Ids((BACKEND.unpack(v)[4] for v in snap.backends.values()),
                           self.features.max_backends - 1, "backend counter", self._next_ids[1])

        counters = _Writes(self._maps["nv_conns"])
        backends = _Writes(self._maps["nv_backends"])
        tables = _Writes(self._maps["nv_maglev"])
        services = _Writes(self._maps["nv_services"])
        keep_services: set[bytes] = set()
        keep_backends: set[tuple[int, int]] = set()
        keep_tables: set[tuple[int, int]] = set()
        old_service_id: dict[VipKey, int] = {}

        for key, entry in table.items():
            try:
                key_bytes = self._key(key)
            except ValueError as exc:
                result.errors[key] = str(exc)   # such a key cannot be in the maps either
                continue
            existing = snap.services.get(key_bytes)
            try:
                if existing:
                    service_id = old_service_id[key] = SERVICE.unpack(existing)[0]
                else:
                    service_id = service_ids.take()
                cached = self._plans.get(key)
                if (cached and cached[1] == service_id and cached[0] == entry
                        and all(snap.backends.get(k) == v for k, v in cached[2].backends.items())):
                    plan, backends_match = cached[2], True
                else:
                    counters_known = {BACKEND.unpack(v)[:2]: BACKEND.unpack(v)[4]
                                      for _i, v in members.get(service_id, ())}
                    plan, backends_match = self._plan(entry, service_id, counters_known, counter_ids), False
            except ValueError as exc:
                result.errors[key] = str(exc)
                continue
            self._plans[key] = (entry, service_id, _Plan(counters=plan.counters, backends=plan.backends,
                                                         chunks=plan.chunks, service=plan.service))
            keep_services.add(key_bytes)
            keep_backends.update(plan.backends)
            for counter_id in plan.new_counters:
                counters.add(key, COUNTER_ID.pack(counter_id), self._zero_count)
                self._retire_outcomes(counter_id)
            self._counter_backend.update(plan.counters)
            self._unattributed.difference_update(plan.counters)
            for backend_key, value in () if backends_match else plan.backends.items():
                if snap.backends.get(backend_key) != value:
                    backends.add(key, BACKEND_KEY.pack(*backend_key), value)
            for chunk, value in enumerate(plan.chunks):
                keep_tables.add((service_id, chunk))
                if snap.tables.get((service_id, chunk)) != value:
                    tables.add(key, MAGLEV_KEY.pack(service_id, chunk), value)
            if existing != plan.service:
                services.add(key, key_bytes, plan.service)

        # A counter id handed out again starts from zero: new-connection count and outcomes.
        writes = self._write(counters, result.errors)
        followed = {key for key, _value in self._maps["nv_outcomes"].items()}   # small: failing pairs only
        writes += self._delete(self._maps["nv_outcomes"], [k for k in counters.keys if k in followed])
        writes += sum(self._write(batch, result.errors) for batch in (backends, tables, services))
        result.programmed = {key for key in table if key not in result.errors}
        for key in result.errors:
            if key in old_service_id:
                # A VIP that failed keeps what the kernel had for it rather than being torn down.
                sid = old_service_id[key]
                keep_services.add(self._key(key))
                keep_tables.update(k for k in snap.tables if k[0] == sid)
                keep_backends.update((sid, index) for index, _v in members.get(sid, ()))

        removed = [k for k in snap.services if k not in keep_services]
        result.removed = {self._vip_key(k) for k in removed}
        for key in set(self._plans) - result.programmed:
            del self._plans[key]
        writes += self._delete(self._maps["nv_services"], removed)
        writes += self._delete(self._maps["nv_maglev"],
                               [MAGLEV_KEY.pack(*k) for k in snap.tables if k not in keep_tables])
        writes += self._delete(self._maps["nv_backends"],
                               [BACKEND_KEY.pack(*k) for k in snap.backends if k not in keep_backends])
        self.last_writes = writes
        self._next_ids = (service_ids.next_id, counter_ids.next_id)
        return result

    def current(self) -> dict[VipKey, VipEntry]:
        """The VIP table the maps hold (adopted as is after a restart): equal to what was applied."""
        snap = self._snapshot()
        members = snap.by_service()
        chunk_slots = self.features.chunk_slots
        out: dict[VipKey, VipEntry] = {}
        for key_bytes, value in snap.services.items():
            key = self._vip_key(key_bytes)
            service_id, table_size, _count, flags = SERVICE.unpack(value)
            active, draining = [], []
            for index, backend in sorted(members.get(service_id, ())):
                (draining if index >= maps.DRAINING_INDEX else active).append(self._public_backend(backend))
            chunks = -(-table_size // chunk_slots)
            raw = b"".join(snap.tables.get((service_id, c), b"") for c in range(chunks))
            lookup = () if flags & maps.SERVICE_IMPLICIT_TABLE else tuple(array.array("H", raw[:table_size * 2]))
            out[key] = VipEntry(key=key, backends=tuple(active), lookup=lookup, draining=tuple(draining))
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
        if any(c not in self._counter_backend and c not in self._unattributed for c in current):
            for value in self._maps["nv_backends"].items():
                counter_id = BACKEND.unpack(value[1])[4]
                self._counter_backend.setdefault(counter_id, self._public_backend(value[1]))
            self._unattributed.update(c for c in current if c not in self._counter_backend)
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
    def _plan(self, entry: VipEntry, service_id: int, counters: dict[tuple[int, int], int],
              counter_ids: _Ids) -> _Plan:
        """One VIP in map form; ``counters`` are the counter ids its (address, port) pairs already
        have. Raises ValueError naming what is wrong with the entry."""
        count = len(entry.backends)
        if count > MAX_BACKENDS_PER_VIP:
            raise ValueError(f"{count} backends: at most {MAX_BACKENDS_PER_VIP} per VIP")
        implicit = not entry.lookup
        try:
            slots = array.array("H", range(count) if implicit else entry.lookup)
        except (OverflowError, TypeError):
            raise ValueError(f"lookup holds an index outside the {count} backends") from None
        if len(slots) > MAX_TABLE_SIZE:
            raise ValueError(f"lookup of {len(slots)} slots: at most {MAX_TABLE_SIZE}")
        if slots and max(slots) >= count:
            raise ValueError(f"lookup index {max(slots)} is outside the {count} backends")
        plan = _Plan()
        members = list(enumerate(entry.backends))
        members += [(maps.DRAINING_INDEX + n, b) for n, b in enumerate(entry.draining)]
        seen: set[tuple[int, int]] = set()
        for index, backend in members:
            ident = _backend_ident(backend)
            if ident in seen:
                raise ValueError(f"backend {backend.ip}:{backend.port} is listed twice "
                                 "(backends and draining must be disjoint)")
            seen.add(ident)
            counter_id = counters.get(ident)
            if counter_id is None:
                counter_id = counter_ids.take()
                plan.new_counters.append(counter_id)
            plan.counters[counter_id] = backend
            flags = maps.BACKEND_DRAINING if index >= maps.DRAINING_INDEX else 0
            plan.backends[(service_id, index)] = BACKEND.pack(*ident, flags, 0, counter_id)
        if slots:
            plan.chunks = self._chunks(slots.tobytes())
        plan.service = SERVICE.pack(service_id, len(slots), count,
                                    maps.SERVICE_IMPLICIT_TABLE if implicit and slots else 0)
        return plan

    def _chunks(self, table: bytes) -> list[bytes]:
        """A u16 slot table cut into nv_maglev values; the tail repeats the table from its start."""
        size = self.features.chunk_slots * 2
        count = -(-len(table) // size)
        padded = (table * (count * size // len(table) + 1))[:count * size]
        return [padded[n * size:(n + 1) * size] for n in range(count)]

    @staticmethod
    def _key(key: VipKey) -> bytes:
        protocol = maps.PROTOCOLS.get(key.protocol)
        if protocol is None:
            raise ValueError(f"protocol {key.protocol!r}: use tcp or udp")
        return bytes(maps.Lb4Key(_address(key.address, "VIP"), _port(key.port, "VIP"), protocol, 0))

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

    @staticmethod
    def _write(batch: _Writes, errors: dict[VipKey, str]) -> int:
        live = [n for n, vip in enumerate(batch.vips) if vip not in errors] if errors else range(len(batch.vips))
        if not live:
            return 0
        try:
            batch.handle.update_batch([batch.keys[n] for n in live], [batch.values[n] for n in live])
            return len(live)
        except MapError:
            pass
        written = 0
        for n in live:   # find out which VIPs the failure belongs to
            vip = batch.vips[n]
            if vip in errors:
                continue
            try:
                batch.handle.update(batch.keys[n], batch.values[n])
                written += 1
            except MapError as exc:
                errors[vip] = f"{batch.handle.spec.name}: {exc}"
        return written

    @staticmethod
    def _delete(handle: MapHandle, keys: list[bytes]) -> int:
        if keys:
            handle.delete_batch(keys)
        return len(keys)
