"""The eBPF socket load balancer: the real ``Dataplane`` over ``bpf/`` (cgroup sock_addr programs).

    VipEntry table ──► map form (service, backends, slot table) ──diff──► pinned maps ◄── programs
                                                 ▲                            │
                                                 └── snapshot (batch read) ◄──┘

``apply`` reads the maps back, compares byte for byte with the desired map form and writes only
what differs, batched, in make-before-break order: counters and backends first, then slot
tables, then services; deletions last. A VIP whose writes fail keeps whatever it had and is
reported in ``ApplyResult.errors``; the others go ahead.

Tables: a VIP's Maglev ``lookup`` is stored exactly, whatever its length, as backend ids in
chunks of ``Features.chunk_slots`` (1008: one 4 KiB kernel allocation each), so ``current()``
returns what was applied and the reconciler's drift check compares equal. Without a lookup
(P2C balancing) each active backend gets one slot; socket LB has no connection counts to balance
on in the kernel, so it spreads new connections evenly instead.
"""

from __future__ import annotations

import array
import ctypes
import socket
import struct
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from bpf import loader, maps
from bpf.loader import Features, LoaderError, MapError, MapHandle, SocketLB
from minuteman.dataplane import ApplyResult, Backend, VipEntry, VipKey

__all__ = ["EbpfDataplane", "Features", "LoaderError", "ebpf_available"]

MAX_TABLE_SIZE = 1 << 20   # slots per VIP; Maglev tables are ~100 per backend


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
    return maps.be16(number)


class _Ids:
    """Hands out ids not in ``used``, from 1 up to ``limit`` inclusive."""

    def __init__(self, used: Iterable[int], limit: int, what: str) -> None:
        self.used = set(used)
        self.limit = limit
        self.what = what
        self.next_id = 1

    def take(self) -> int:
        while self.next_id in self.used:
            self.next_id += 1
        if self.next_id > self.limit:
            raise ValueError(f"no free {self.what} id (limit {self.limit})")
        self.used.add(self.next_id)
        return self.next_id


@dataclass
class _Snapshot:
    """The maps as raw bytes: services by key, backends by id, table chunks by (service, chunk)."""

    services: dict[bytes, bytes]
    backends: dict[int, bytes]
    tables: dict[tuple[int, int], bytes]


@dataclass
class _Plan:
    """One VIP in map form: its values as bytes, ready to compare with a snapshot."""

    new_backends: list[int] = field(default_factory=list)
    backends: dict[int, bytes] = field(default_factory=dict)
    chunks: list[bytes] = field(default_factory=list)
    service: bytes = b""


@dataclass
class _Writes:
    """One map's planned writes, each tagged with the VIP it belongs to."""

    handle: MapHandle
    vips: list[VipKey]
    keys: list
    values: list[bytes]

    def add(self, vip: VipKey, key, value: bytes) -> None:
        self.vips.append(vip)
        self.keys.append(key)
        self.values.append(value)


class EbpfDataplane:
    """The socket LB of one node's cgroup. Construction loads and attaches (replacing a previous
    agent's programs without a gap) and adopts whatever the pinned maps hold.

    Raises ``LoaderError`` when the programs cannot be loaded or attached; after that, no
    method raises for a bad VIP: errors come back per VIP in ``ApplyResult``.
    """

    name = "ebpf"

    def __init__(self, cgroup_path: str | Path, pin_dir: str | Path, *, features: Features = Features(),
                 attach: bool = True, allow_root_cgroup: bool = False) -> None:
        self.cgroup_path = Path(cgroup_path)
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
        self._zero_count = b"\0" * self._maps["nv_conns"].value_size
        self.last_writes = 0   # map elements written or deleted by the last apply

    # -- Dataplane ------------------------------------------------------------------------------
    def apply(self, table: dict[VipKey, VipEntry]) -> ApplyResult:
        """Make the maps hold exactly ``table``. Idempotent: a second call writes nothing."""
        result = ApplyResult()
        snap = self._snapshot()
        service_ids = _Ids((self._service(v)[0] for v in snap.services.values()), 2**32 - 1, "service")
        backend_ids = _Ids(snap.backends, self.features.max_backends - 1, "backend")
        known: dict[int, dict[tuple[int, int], int]] = defaultdict(dict)
        for backend_id, value in snap.backends.items():
            address, port, _flags, service_id, _position = self._backend(value)
            known[service_id][(address, port)] = backend_id
        chunks_of: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for chunk_key in snap.tables:
            chunks_of[chunk_key[0]].append(chunk_key)

        counters = _Writes(self._maps["nv_conns"], [], [], [])
        backends = _Writes(self._maps["nv_backends"], [], [], [])
        tables = _Writes(self._maps["nv_maglev"], [], [], [])
        services = _Writes(self._maps["nv_services"], [], [], [])
        keep_services: set[bytes] = set()
        keep_backends: set[int] = set()
        keep_tables: set[tuple[int, int]] = set()
        old_service_id: dict[VipKey, int] = {}

        for key, entry in table.items():
            try:
                key_bytes = bytes(self._key(key))
            except ValueError as exc:
                result.errors[key] = str(exc)   # such a key cannot be in the maps either
                continue
            existing = snap.services.get(key_bytes)
            if existing:
                old_service_id[key] = self._service(existing)[0]
            try:
                service_id = old_service_id[key] if existing else service_ids.take()
                plan = self._plan(entry, service_id, known.get(service_id, {}) if existing else {},
                                  backend_ids)
            except ValueError as exc:
                result.errors[key] = str(exc)
                continue
            keep_services.add(key_bytes)
            for backend_id in plan.new_backends:
                counters.add(key, ctypes.c_uint32(backend_id), self._zero_count)
            for backend_id, value in plan.backends.items():
                keep_backends.add(backend_id)
                if snap.backends.get(backend_id) != value:
                    backends.add(key, ctypes.c_uint32(backend_id), value)
            for chunk, value in enumerate(plan.chunks):
                keep_tables.add((service_id, chunk))
                if snap.tables.get((service_id, chunk)) != value:
                    tables.add(key, maps.Lb4MaglevKey(service_id, chunk), value)
            if existing != plan.service:
                services.add(key, maps.Lb4Key.from_buffer_copy(key_bytes), plan.service)

        writes = 0
        for batch in (counters, backends, tables, services):
            writes += self._write(batch, result.errors)
        result.programmed = {key for key in table if key not in result.errors}
        for key in result.errors:
            if key in old_service_id:
                # A VIP that failed keeps what the kernel had for it rather than being torn down.
                sid = old_service_id[key]
                keep_services.add(bytes(self._key(key)))
                keep_tables.update(chunks_of.get(sid, ()))
                keep_backends.update(known.get(sid, {}).values())

        removed = [k for k in snap.services if k not in keep_services]
        writes += self._delete(self._maps["nv_services"], [maps.Lb4Key.from_buffer_copy(k) for k in removed])
        result.removed = {self._vip_key(maps.Lb4Key.from_buffer_copy(k)) for k in removed}
        writes += self._delete(self._maps["nv_maglev"],
                               [maps.Lb4MaglevKey(*k) for k in snap.tables if k not in keep_tables])
        writes += self._delete(self._maps["nv_backends"],
                               [ctypes.c_uint32(i) for i in snap.backends if i not in keep_backends])
        self.last_writes = writes
        return result

    def current(self) -> dict[VipKey, VipEntry]:
        """The VIP table the maps hold (adopted as is after a restart): equal to what was applied."""
        snap = self._snapshot()
        by_service: dict[int, list[tuple[int, tuple]]] = defaultdict(list)
        for backend_id, value in snap.backends.items():
            decoded = self._backend(value)
            by_service[decoded[3]].append((backend_id, decoded))
        chunk_slots = self.features.chunk_slots
        out: dict[VipKey, VipEntry] = {}
        for key_bytes, value in snap.services.items():
            key = self._vip_key(maps.Lb4Key.from_buffer_copy(key_bytes))
            service_id, table_size, _count, flags = self._service(value)
            members = sorted(by_service.get(service_id, []), key=lambda m: m[1][4])
            active = [(bid, d) for bid, d in members if not d[2] & maps.BACKEND_DRAINING]
            draining = [(bid, d) for bid, d in members if d[2] & maps.BACKEND_DRAINING]
            index = {bid: n for n, (bid, _d) in enumerate(active)}
            chunks = -(-table_size // chunk_slots)
            raw = b"".join(snap.tables.get((service_id, c), b"") for c in range(chunks))
            slots = array.array("I", raw[:table_size * 4])
            lookup = () if flags & maps.SERVICE_IMPLICIT_TABLE else tuple(index.get(s, -1) for s in slots)
            out[key] = VipEntry(
                key=key,
                backends=tuple(self._public_backend(d) for _bid, d in active),
                lookup=lookup,
                draining=tuple(self._public_backend(d) for _bid, d in draining),
            )
        return out

    def connection_counts(self) -> dict[tuple[VipKey, Backend], int]:
        """New connections per (VIP, backend), summed over CPUs, since the backend joined the VIP."""
        snap = self._snapshot(tables=False)
        vip_by_service = {self._service(v)[0]: self._vip_key(maps.Lb4Key.from_buffer_copy(k))
                          for k, v in snap.services.items()}
        conns = self._maps["nv_conns"]
        counts: dict[tuple[VipKey, Backend], int] = {}
        for backend_id, value in snap.backends.items():
            decoded = self._backend(value)
            vip = vip_by_service.get(decoded[3])
            raw = conns.lookup(ctypes.c_uint32(backend_id))
            if vip is None or raw is None:
                continue
            counts[(vip, self._public_backend(decoded))] = sum(array.array("Q", raw))
        return counts

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
        """Attach points with one of our programs on the cgroup right now."""
        return sorted({p.attach_point for p in loader.attached_programs(self.cgroup_path)})

    # -- map form ---------------------------------------------------------------------------------
    def _plan(self, entry: VipEntry, service_id: int, known: dict[tuple[int, int], int],
              backend_ids: _Ids) -> _Plan:
        """One VIP in map form. Raises ValueError naming what is wrong with the entry."""
        if len(entry.backends) > 0xFFFF:
            raise ValueError(f"{len(entry.backends)} backends: at most 65535 per VIP")
        implicit = not entry.lookup
        lookup = tuple(range(len(entry.backends))) if implicit else entry.lookup
        if lookup and not entry.backends:
            raise ValueError("lookup given but no backends")
        if len(lookup) > MAX_TABLE_SIZE:
            raise ValueError(f"lookup of {len(lookup)} slots: at most {MAX_TABLE_SIZE}")
        if lookup and (min(lookup) < 0 or max(lookup) >= len(entry.backends)):
            bad = next(i for i in lookup if not 0 <= i < len(entry.backends))
            raise ValueError(f"lookup index {bad} is outside the {len(entry.backends)} backends")
        plan = _Plan()
        members = [(b, 0, n) for n, b in enumerate(entry.backends)]
        members += [(b, maps.BACKEND_DRAINING, n) for n, b in enumerate(entry.draining)]
        seen: set[tuple[int, int]] = set()
        active_ids: list[int] = []
        for backend, flags, position in members:
            what = f"backend {backend.ip}:{backend.port}"
            ident = (_address(backend.ip, what), _port(backend.port, what))
            if ident in seen:
                raise ValueError(f"{what} is listed twice (backends and draining must be disjoint)")
            seen.add(ident)
            backend_id = known.get(ident)
            if backend_id is None:
                backend_id = backend_ids.take()
                plan.new_backends.append(backend_id)
            if not flags:
                active_ids.append(backend_id)
            plan.backends[backend_id] = bytes(maps.Lb4Backend(*ident, flags, 0, service_id, position, 0))
        if lookup:
            plan.chunks = self._chunks([active_ids[i] for i in lookup])
        plan.service = bytes(maps.Lb4Service(service_id, len(lookup), len(active_ids),
                                             maps.SERVICE_IMPLICIT_TABLE if implicit and lookup else 0))
        return plan

    def _chunks(self, ids: list[int]) -> list[bytes]:
        """Backend ids by slot, cut into nv_maglev values; the tail repeats the table from its start."""
        size = self.features.chunk_slots
        count = -(-len(ids) // size)
        padded = (ids * (count * size // len(ids) + 1))[:count * size]
        blob = array.array("I", padded).tobytes()
        return [blob[n * size * 4:(n + 1) * size * 4] for n in range(count)]

    def _key(self, key: VipKey) -> maps.Lb4Key:
        protocol = maps.PROTOCOLS.get(key.protocol)
        if protocol is None:
            raise ValueError(f"protocol {key.protocol!r}: use tcp or udp")
        return maps.Lb4Key(_address(key.address, "VIP"), _port(key.port, "VIP"), protocol, 0)

    @staticmethod
    def _vip_key(key: maps.Lb4Key) -> VipKey:
        return VipKey(maps.from_be32(key.address), maps.from_be16(key.port),
                      maps.PROTOCOL_NAMES.get(key.protocol, str(key.protocol)))  # type: ignore[arg-type]

    @staticmethod
    def _service(value: bytes) -> tuple[int, int, int, int]:
        """(id, table_size, backend_count, flags) of an lb4_service."""
        return struct.unpack_from("=IIHH", value)

    @staticmethod
    def _backend(value: bytes) -> tuple[int, int, int, int, int]:
        """(address, port, flags, service_id, position) of an lb4_backend."""
        address, port, flags, _pad, service_id, position, _pad2 = struct.unpack_from("=IHBBIHH", value)
        return address, port, flags, service_id, position

    @staticmethod
    def _public_backend(decoded: tuple) -> Backend:
        return Backend(maps.from_be32(decoded[0]), maps.from_be16(decoded[1]))

    # -- kernel I/O -------------------------------------------------------------------------------
    def _snapshot(self, tables: bool = True) -> _Snapshot:
        return _Snapshot(
            services=dict(self._maps["nv_services"].items()),
            backends={struct.unpack("=I", k)[0]: v for k, v in self._maps["nv_backends"].items()},
            tables={struct.unpack("=II", k): v for k, v in self._maps["nv_maglev"].items()} if tables else {},
        )

    @staticmethod
    def _write(batch: _Writes, errors: dict[VipKey, str]) -> int:
        live = [n for n, vip in enumerate(batch.vips) if vip not in errors]
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
    def _delete(handle: MapHandle, keys: list) -> int:
        if keys:
            handle.delete_batch(keys)
        return len(keys)
