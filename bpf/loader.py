"""Compile, load, attach and pin the socket-LB programs; open their pinned maps.

bcc compiles one translation unit per attach point (``sock_*.c``) with the feature ``-D`` flags
and loads it as a ``BPF_PROG_TYPE_CGROUP_SOCK_ADDR`` program. Everything after loading goes
through libbpf (the library bcc itself links) by file descriptor: cgroup attach/detach/query,
pinning, and batched map operations on the ctypes structs of ``bpf/maps.py``. The connect-outcome
programs (``trace_outcomes.c``) are raw tracepoint programs instead, attached as BPF links.

Lifetime: maps are pinned under ``pin_dir`` (``BPF_TABLE_PINNED``) and programs are pinned next
to them and attached the classic way with ``BPF_F_ALLOW_MULTI``, so both outlive this process:
VIPs keep working while the agent is down, and a restarted agent opens the same maps. Only
``teardown`` (or removing the cgroup) detaches. The tracepoint links are pinned in ``pin_dir`` too,
so they live exactly as long as the pins.

This module and ``minuteman/ebpf.py`` are the only importers of bcc.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bpf import maps

BPF_DIR = Path(__file__).resolve().parent
BPF_F_ALLOW_MULTI = 1 << 1
BPF_PROG_TYPE_SOCK_OPS = 13
BPF_PROG_TYPE_RAW_TRACEPOINT = 17
BPF_PROG_TYPE_CGROUP_SOCK_ADDR = 18
BPF_ANY = 0
PROG_PIN_PREFIX = "prog_"
LINK_PIN_PREFIX = "link_"
_PIN_DIR_OK = re.compile(r"^/[A-Za-z0-9_./-]+$")
_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$')
# bcc's compiler (clang in-process) is not safe to run from two threads at once: the agent builds
# the socket LB and the DNS replay program on worker threads; one compiles at a time.
COMPILE_LOCK = threading.Lock()


class LoaderError(Exception):
    """The socket LB cannot be loaded, attached or opened; the message says why."""


class MapError(Exception):
    """A map operation failed; ``errno`` is the kernel's answer."""

    def __init__(self, message: str, err: int) -> None:
        super().__init__(f"{message}: {os.strerror(err)}")
        self.errno = err


@dataclass(frozen=True)
class AttachPoint:
    name: str          # "connect4"
    source: str        # file under bpf/
    function: str      # program (and kernel prog name, <= 15 chars)
    attach_type: int   # enum bpf_attach_type
    prog_type: int = BPF_PROG_TYPE_CGROUP_SOCK_ADDR


ATTACH_POINTS: dict[str, AttachPoint] = {
    ap.name: ap for ap in (
        AttachPoint("connect4", "sock_connect4.c", "nv_connect4", 10),        # CGROUP_INET4_CONNECT
        AttachPoint("sendmsg4", "sock_sendmsg4.c", "nv_sendmsg4", 14),        # CGROUP_UDP4_SENDMSG
        AttachPoint("recvmsg4", "sock_recvmsg4.c", "nv_recvmsg4", 19),        # CGROUP_UDP4_RECVMSG
        AttachPoint("getpeername4", "sock_getpeername4.c", "nv_getpeername4", 29),  # CGROUP_INET4_GETPEERNAME
    )
}
# Attach points earlier builds used: an upgraded agent still finds and detaches their programs.
RETIRED_ATTACH_POINTS: dict[str, AttachPoint] = {
    "sock_ops": AttachPoint("sock_ops", "", "nv_sockops", 3, BPF_PROG_TYPE_SOCK_OPS),  # CGROUP_SOCK_OPS
}


@dataclass(frozen=True)
class TracePoint:
    """A raw tracepoint program: global (not per cgroup), so it filters by socket cookie."""

    tracepoint: str    # "tcp_receive_reset"
    source: str
    function: str


TRACEPOINTS: dict[str, TracePoint] = {
    tp.tracepoint: tp for tp in (
        TracePoint("tcp_receive_reset", "trace_outcomes.c", "nv_tcp_reset"),
        TracePoint("tcp_retransmit_skb", "trace_outcomes.c", "nv_tcp_retrans"),
    )
}


@dataclass(frozen=True)
class Features:
    """What gets compiled in (``-D`` flags) and attached."""

    udp: bool = True                 # sendmsg4 + recvmsg4: unconnected UDP and its replies
    peername: bool = True            # getpeername4: connected sockets see the VIP as their peer
    outcomes: bool = True            # tracepoints: failed TCP connects per backend, for health
    random_slot: bool = False        # random slot per connection instead of the socket-cookie hash
    count_connections: bool = True   # per-backend new-connection counters
    chunk_slots: int = maps.DEFAULT_CHUNK_SLOTS   # slots per nv_maglev element
    max_services: int = maps.DEFAULT_MAX_SERVICES
    max_backends: int = maps.DEFAULT_MAX_BACKENDS
    max_chunks: int = maps.DEFAULT_MAX_CHUNKS
    peer_slots: int = maps.DEFAULT_PEER_SLOTS     # nv_peers slots (power of two)
    max_revnat: int = maps.DEFAULT_MAX_REVNAT

    def __post_init__(self) -> None:
        if self.peer_slots <= 0 or self.peer_slots & (self.peer_slots - 1):
            raise ValueError(f"peer_slots {self.peer_slots}: must be a power of two")
        if not 0 < self.chunk_slots <= 32768:
            raise ValueError(f"chunk_slots {self.chunk_slots}: must be in 1-32768")
        if self.outcomes and not self.count_connections:
            # Established connects are the counted ones that did not fail: without the counters
            # health would see only failures, and any five ever would take a backend out.
            raise ValueError("outcomes needs count_connections")

    def attach_points(self) -> list[AttachPoint]:
        names = ["connect4"] + (["sendmsg4", "recvmsg4"] if self.udp else []) + (
            ["getpeername4"] if self.peername else [])
        return [ATTACH_POINTS[n] for n in names]

    def tracepoints(self) -> list[TracePoint]:
        return list(TRACEPOINTS.values()) if self.outcomes else []

    def cflags(self, pin_dir: Path) -> list[str]:
        from bpf.btf import BtfError, sock_offsets  # noqa: PLC0415 - reads the kernel's BTF, only when needed

        try:
            offsets = sock_offsets() if self.outcomes else {}
        except BtfError as exc:
            raise LoaderError(f"connect outcomes (Features.outcomes) need the kernel's BTF: {exc}") from exc
        return [f"-D{name}={value}" for name, value in offsets.items()] + [
            f'-DNAVSTAR_PIN_DIR="{pin_dir}"',
            f"-DNAVSTAR_LB_CHUNK_SLOTS={self.chunk_slots}",
            f"-DNAVSTAR_MAX_SERVICES={self.max_services}",
            f"-DNAVSTAR_MAX_BACKENDS={self.max_backends}",
            f"-DNAVSTAR_MAX_CHUNKS={self.max_chunks}",
            f"-DNAVSTAR_PEER_SLOTS={self.peer_slots}",
            f"-DNAVSTAR_MAX_REVNAT={self.max_revnat}",
            f"-DNAVSTAR_RANDOM_SLOT={int(self.random_slot)}",
            f"-DNAVSTAR_COUNT_CONNECTIONS={int(self.count_connections)}",
        ]

    def map_specs(self) -> dict[str, maps.MapSpec]:
        return maps.map_specs(self.chunk_slots, self.max_services, self.max_backends, self.max_chunks,
                              self.peer_slots, self.max_revnat)


# -- libbpf, by file descriptor ---------------------------------------------------------------
class _BpfMapInfo(ctypes.Structure):
    # Leading fields of uapi struct bpf_map_info; the kernel fills only what we ask for.
    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("key_size", ctypes.c_uint32),
                ("value_size", ctypes.c_uint32), ("max_entries", ctypes.c_uint32),
                ("map_flags", ctypes.c_uint32), ("name", ctypes.c_char * 16)]


class _BpfProgInfo(ctypes.Structure):
    # Leading fields of uapi struct bpf_prog_info, up to the name.
    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("tag", ctypes.c_uint8 * 8),
                ("jited_prog_len", ctypes.c_uint32), ("xlated_prog_len", ctypes.c_uint32),
                ("jited_prog_insns", ctypes.c_uint64), ("xlated_prog_insns", ctypes.c_uint64),
                ("load_time", ctypes.c_uint64), ("created_by_uid", ctypes.c_uint32),
                ("nr_map_ids", ctypes.c_uint32), ("map_ids", ctypes.c_uint64), ("name", ctypes.c_char * 16)]


def _libbpf() -> ctypes.CDLL:
    lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
    p, u32p, i, u32 = ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32), ctypes.c_int, ctypes.c_uint32
    signatures = {
        "bpf_obj_get": [ctypes.c_char_p],
        "bpf_obj_pin": [i, ctypes.c_char_p],
        "bpf_obj_get_info_by_fd": [i, p, u32p],
        "bpf_prog_attach": [i, i, i, ctypes.c_uint],
        "bpf_prog_detach2": [i, i, i],
        "bpf_prog_query": [i, i, u32, u32p, u32p, u32p],
        "bpf_raw_tracepoint_open": [ctypes.c_char_p, i],
        "bpf_prog_get_fd_by_id": [u32],
        "bpf_map_lookup_elem": [i, p, p],
        "bpf_map_update_elem": [i, p, p, ctypes.c_uint64],
        "bpf_map_delete_elem": [i, p],
        "bpf_map_lookup_batch": [i, p, p, p, p, u32p, p],
        "bpf_map_update_batch": [i, p, p, u32p, p],
        "bpf_map_delete_batch": [i, p, u32p, p],
        "bpf_map_get_next_key": [i, p, p],
    }
    for name, argtypes in signatures.items():
        fn = getattr(lib, name)
        fn.argtypes = argtypes
        fn.restype = i
    return lib


_lib: ctypes.CDLL | None = None


def libbpf() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        _lib = _libbpf()
    return _lib


def _err(rc: int) -> int:
    # libbpf >= 1.0 returns -errno; errno is set as well.
    return -rc if rc < 0 else (ctypes.get_errno() or errno.EIO)


def obj_get(path: Path) -> int:
    fd = libbpf().bpf_obj_get(str(path).encode())
    if fd < 0:
        raise MapError(f"open pinned object {path}", _err(fd))
    return fd


def _info(fd: int, info: ctypes.Structure, what: str):
    size = ctypes.c_uint32(ctypes.sizeof(info))
    rc = libbpf().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size))
    if rc < 0:
        raise MapError(what, _err(rc))
    return info


def map_info(fd: int) -> _BpfMapInfo:
    return _info(fd, _BpfMapInfo(), "map info")


def prog_info(fd: int) -> _BpfProgInfo:
    return _info(fd, _BpfProgInfo(), "program info")


def possible_cpus() -> int:
    """Per-CPU map values carry one slot per *possible* CPU."""
    text = Path("/sys/devices/system/cpu/possible").read_text().strip()
    count = 0
    for part in text.split(","):
        low, _, high = part.partition("-")
        count += int(high or low) - int(low) + 1
    return count


# -- maps ---------------------------------------------------------------------------------------
class MapHandle:
    """One pinned map, by file descriptor. Keys and values are bytes laid out as the mirror's
    structs (``bytes(struct)``, ``struct.pack``): the batch calls move whole arrays of them, and
    comparing bytes is how ``apply`` finds what differs. Per-CPU values are one slot per
    possible CPU, each rounded up to 8 bytes."""

    CHUNK = 4096

    def __init__(self, spec: maps.MapSpec, fd: int) -> None:
        self.spec = spec
        self.fd = fd
        self.key_size = ctypes.sizeof(spec.key)
        value_size = ctypes.sizeof(spec.value)
        self.value_size = (value_size + 7) // 8 * 8 * possible_cpus() if spec.percpu else value_size

    @classmethod
    def open(cls, spec: maps.MapSpec, pin_dir: Path) -> MapHandle:
        fd = obj_get(pin_dir / spec.name)
        try:
            check_compatible(spec, fd, pin_dir / spec.name)
        except LoaderError:
            os.close(fd)
            raise
        return cls(spec, fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _blob(self, items: Sequence[bytes], size: int, what: str) -> bytes:
        blob = b"".join(items)
        if len(blob) != size * len(items):
            raise ValueError(f"{self.spec.name}: each {what} must be {size} bytes")
        return blob

    def lookup(self, key: bytes) -> bytes | None:
        value = ctypes.create_string_buffer(self.value_size)
        rc = libbpf().bpf_map_lookup_elem(self.fd, self._blob([key], self.key_size, "key"), value)
        if rc < 0:
            if _err(rc) == errno.ENOENT:
                return None
            raise MapError(f"{self.spec.name} lookup", _err(rc))
        return value.raw

    def update(self, key: bytes, value: bytes) -> None:
        rc = libbpf().bpf_map_update_elem(self.fd, self._blob([key], self.key_size, "key"),
                                          self._blob([value], self.value_size, "value"), BPF_ANY)
        if rc < 0:
            raise MapError(f"{self.spec.name} update", _err(rc))

    def delete(self, key: bytes) -> bool:
        rc = libbpf().bpf_map_delete_elem(self.fd, self._blob([key], self.key_size, "key"))
        if rc < 0:
            if _err(rc) == errno.ENOENT:
                return False
            raise MapError(f"{self.spec.name} delete", _err(rc))
        return True

    def update_batch(self, keys: Sequence[bytes], values: Sequence[bytes]) -> None:
        """Write all pairs with ``BPF_MAP_UPDATE_BATCH``; raises on a failure."""
        if len(keys) != len(values):
            raise ValueError(f"{self.spec.name}: {len(keys)} keys but {len(values)} values")
        self.update_packed(self._blob(keys, self.key_size, "key"), self._blob(values, self.value_size, "value"))

    def update_packed(self, keys: bytes, values: bytes) -> None:
        """``update_batch`` of keys and values already packed back to back (what a planner that
        builds whole arrays hands over without splitting them), CHUNK pairs per system call.
        The call releases the GIL, so another thread can plan while the kernel writes."""
        count_all = len(keys) // self.key_size
        if len(keys) != count_all * self.key_size or len(values) != count_all * self.value_size:
            raise ValueError(f"{self.spec.name}: {len(keys)} key bytes and {len(values)} value bytes "
                             f"are not whole pairs of {self.key_size} + {self.value_size}")
        # Addresses into the two blobs (kept alive by the arguments), not slices: no copies.
        key_base = ctypes.cast(ctypes.c_char_p(keys), ctypes.c_void_p).value or 0
        value_base = ctypes.cast(ctypes.c_char_p(values), ctypes.c_void_p).value or 0
        for start in range(0, count_all, self.CHUNK):
            part = min(self.CHUNK, count_all - start)
            count = ctypes.c_uint32(part)
            rc = libbpf().bpf_map_update_batch(self.fd, key_base + start * self.key_size,
                                               value_base + start * self.value_size, ctypes.byref(count), None)
            if rc < 0:
                raise MapError(f"{self.spec.name} update batch ({count.value} of {part} written)", _err(rc))

    def delete_batch(self, keys: Sequence[bytes]) -> None:
        """Delete every key; keys already gone are not an error."""
        for start in range(0, len(keys), self.CHUNK):
            part = keys[start:start + self.CHUNK]
            count = ctypes.c_uint32(len(part))
            rc = libbpf().bpf_map_delete_batch(self.fd, self._blob(part, self.key_size, "key"),
                                               ctypes.byref(count), None)
            if rc < 0:
                # A missing key stops the batch there; finish one by one.
                if _err(rc) != errno.ENOENT:
                    raise MapError(f"{self.spec.name} delete batch", _err(rc))
                for key in part[count.value:]:
                    self.delete(key)

    def empty(self) -> bool:
        """Whether the map holds nothing; for an empty hash map much cheaper than ``items()``
        (``BPF_MAP_GET_NEXT_KEY`` walks the buckets without taking their locks)."""
        key = ctypes.create_string_buffer(self.key_size)
        rc = libbpf().bpf_map_get_next_key(self.fd, None, key)
        if rc < 0 and _err(rc) != errno.ENOENT:
            raise MapError(f"{self.spec.name} next key", _err(rc))
        return rc < 0

    def read_packed(self) -> tuple[bytes, bytes]:
        """Every key and every value, each packed back to back in the same order (``items()``
        without a Python object per pair: 262,144 per-CPU counters in one go)."""
        keys, values = [], []
        for key_blob, value_blob, count in self._batches():
            keys.append(key_blob[:count * self.key_size])
            values.append(value_blob[:count * self.value_size])
        return b"".join(keys), b"".join(values)

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value) pair, read with ``BPF_MAP_LOOKUP_BATCH``."""
        for key_raw, value_raw, count in self._batches():
            for n in range(count):
                yield (key_raw[n * self.key_size:(n + 1) * self.key_size],
                       value_raw[n * self.value_size:(n + 1) * self.value_size])

    def _batches(self) -> Iterator[tuple[bytes, bytes, int]]:
        """The map in ``BPF_MAP_LOOKUP_BATCH`` reads: (keys, values, how many pairs)."""
        if self.spec.map_type != maps.BPF_MAP_TYPE_ARRAY and self.spec.map_type != maps.BPF_MAP_TYPE_PERCPU_ARRAY \
                and self.empty():
            return
        keys = ctypes.create_string_buffer(self.key_size * self.CHUNK)
        values = ctypes.create_string_buffer(self.value_size * self.CHUNK)
        token_in, token_out = ctypes.c_uint64(), ctypes.c_uint64()
        first = True
        while True:
            count = ctypes.c_uint32(self.CHUNK)
            rc = libbpf().bpf_map_lookup_batch(
                self.fd, None if first else ctypes.byref(token_in), ctypes.byref(token_out),
                keys, values, ctypes.byref(count), None)
            done = rc < 0
            if done and _err(rc) != errno.ENOENT:
                raise MapError(f"{self.spec.name} lookup batch", _err(rc))
            yield keys.raw, values.raw, count.value
            if done:
                return
            token_in.value = token_out.value
            first = False


def check_compatible(spec: maps.MapSpec, fd: int, path: Path) -> None:
    """A pinned map from an older build must have this build's layout, or bcc would reuse it
    silently with the wrong sizes."""
    info = map_info(fd)
    want = (spec.map_type, ctypes.sizeof(spec.key), ctypes.sizeof(spec.value), spec.max_entries, spec.flags)
    have = (info.type, info.key_size, info.value_size, info.max_entries, info.map_flags)
    if want != have:
        fields = "type, key size, value size, max entries, flags"
        raise LoaderError(f"pinned map {path} has ({fields}) = {have}, this build needs {want}; "
                          f"remove {path.parent} (teardown) to start from empty maps")


# -- programs and cgroups ---------------------------------------------------------------------
def translation_unit(source: Path, _seen: set[Path] | None = None) -> str:
    """The attach point's C with its quoted ``lib/*.h`` includes spliced in.

    bcc rewrites map accesses (``map.lookup()``) only in the main file, so the shared helpers
    must be part of it; ``#line`` markers keep compiler messages pointing at the real files.
    System includes (``<...>``) are left to the compiler.
    """
    seen = set() if _seen is None else _seen
    source = source.resolve()
    if source in seen:
        return ""
    seen.add(source)
    out = [f'#line 1 "{source}"']
    for number, line in enumerate(source.read_text().splitlines(), 1):
        match = _INCLUDE.match(line)
        if match:
            out.append(translation_unit(source.parent / match.group(1), seen))
            out.append(f'#line {number + 1} "{source}"')
        else:
            out.append(line)
    return "\n".join(out) + "\n"


@dataclass(frozen=True)
class AttachedProgram:
    id: int
    name: str
    attach_point: str


_ALL_ATTACH_POINTS = (*ATTACH_POINTS.values(), *RETIRED_ATTACH_POINTS.values())


def _mounts(fstype: str) -> list[Path]:
    found = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        parts = line.split()
        if len(parts) > 2 and parts[2] == fstype:
            found.append(Path(parts[1]))
    return found


def _under(path: Path, roots: list[Path]) -> Path | None:
    for root in roots:
        if path == root or root in path.parents:
            return root
    return None


def check_cgroup(cgroup: Path, allow_root: bool = False) -> Path:
    cgroup = Path(cgroup).resolve()
    mount = _under(cgroup, _mounts("cgroup2"))
    if mount is None:
        raise LoaderError(f"{cgroup} is not in a cgroup v2 hierarchy (mounted: {_mounts('cgroup2')})")
    if cgroup == mount and not allow_root:
        raise LoaderError(f"refusing to attach to the root cgroup {cgroup}; pass allow_root=True on a real host")
    if not cgroup.is_dir():
        raise LoaderError(f"cgroup {cgroup} does not exist")
    return cgroup


def check_pin_dir(pin_dir: Path) -> Path:
    pin_dir = Path(pin_dir)
    if not _PIN_DIR_OK.match(str(pin_dir)):
        raise LoaderError(f"pin directory {pin_dir!s}: use an absolute path of letters, digits, '_', '.', '-', '/'")
    if _under(pin_dir, _mounts("bpf")) is None:
        raise LoaderError(f"pin directory {pin_dir} is not on a bpffs mount (mount -t bpf bpf /sys/fs/bpf)")
    return pin_dir


def _open_dir(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY)


def attached_programs(cgroup: Path) -> list[AttachedProgram]:
    """The socket-LB programs (ours, by name) attached directly to ``cgroup``."""
    ours = {ap.function: ap.name for ap in _ALL_ATTACH_POINTS}
    found = []
    fd = _open_dir(Path(cgroup))
    try:
        for ap in _ALL_ATTACH_POINTS:
            for prog_id in _query(fd, ap.attach_type):
                name = _prog_name(prog_id)
                if ours.get(name) == ap.name:
                    found.append(AttachedProgram(prog_id, name, ap.name))
    finally:
        os.close(fd)
    return found


def _query(cgroup_fd: int, attach_type: int) -> list[int]:
    ids = (ctypes.c_uint32 * 64)()
    count = ctypes.c_uint32(len(ids))
    flags = ctypes.c_uint32()
    rc = libbpf().bpf_prog_query(cgroup_fd, attach_type, 0, ctypes.byref(flags), ids, ctypes.byref(count))
    if rc < 0:
        raise MapError(f"query cgroup programs (attach type {attach_type})", _err(rc))
    return list(ids[:count.value])


def _prog_name(prog_id: int) -> str:
    fd = libbpf().bpf_prog_get_fd_by_id(prog_id)
    if fd < 0:
        return ""
    try:
        return prog_info(fd).name.decode()
    finally:
        os.close(fd)


def _detach_by_id(cgroup_fd: int, prog_id: int, attach_type: int) -> None:
    fd = libbpf().bpf_prog_get_fd_by_id(prog_id)
    if fd < 0:
        return
    try:
        libbpf().bpf_prog_detach2(fd, cgroup_fd, attach_type)
    finally:
        os.close(fd)


def detach(cgroup: Path, keep: dict[str, int] | None = None) -> int:
    """Detach every socket-LB program of ours from ``cgroup`` except the ids in ``keep``
    (attach point → program id). Returns how many were detached."""
    keep = keep or {}
    detached = 0
    fd = _open_dir(Path(cgroup))
    try:
        for ap in _ALL_ATTACH_POINTS:
            for prog_id in _query(fd, ap.attach_type):
                if prog_id != keep.get(ap.name) and _prog_name(prog_id) == ap.function:
                    _detach_by_id(fd, prog_id, ap.attach_type)
                    detached += 1
    finally:
        os.close(fd)
    return detached


def attached_tracepoints(pin_dir: Path) -> list[str]:
    """Tracepoints with one of our links pinned under ``pin_dir`` (so attached)."""
    pin_dir = Path(pin_dir)
    return sorted(tp for tp in TRACEPOINTS if (pin_dir / f"{LINK_PIN_PREFIX}{tp}").exists())


def teardown(cgroup: Path | None, pin_dir: Path) -> None:
    """Detach our programs from ``cgroup`` and remove every pin under ``pin_dir`` (which also
    detaches the tracepoint links). Idempotent; needs no compiler, so clean-up works even where
    loading would not."""
    if cgroup is not None and Path(cgroup).is_dir():
        detach(Path(cgroup))
    pin_dir = Path(pin_dir)
    if pin_dir.is_dir():
        shutil.rmtree(pin_dir)


@dataclass
class SocketLB:
    """The socket LB of one node: programs loaded from ``bpf/`` and the maps pinned in ``pin_dir``.

    ``SocketLB.load`` compiles and loads (creating or re-opening the pinned maps);
    ``SocketLB.open`` only opens the pinned maps (to read them from another process).
    """

    pin_dir: Path
    features: Features
    maps: dict[str, MapHandle] = field(default_factory=dict)
    programs: dict[str, int] = field(default_factory=dict)   # attach point → loaded prog fd
    trace_programs: dict[str, int] = field(default_factory=dict)   # tracepoint → loaded prog fd
    _links: list[int] = field(default_factory=list)
    _modules: list = field(default_factory=list)
    created: bool = False   # this load created the maps: every counter in them is still zero

    @classmethod
    def load(cls, pin_dir: Path, features: Features = Features()) -> SocketLB:
        from bcc import BPF  # noqa: PLC0415 - only the loader needs a compiler

        pin_dir = check_pin_dir(Path(pin_dir))
        pin_dir.mkdir(parents=True, exist_ok=True)
        specs = features.map_specs()
        for spec in specs.values():
            pin = pin_dir / spec.name
            if pin.exists():
                MapHandle.open(spec, pin_dir).close()   # raises LoaderError on a layout change
        lb = cls(pin_dir, features, created=not (pin_dir / "nv_conns").exists())
        try:
            # One translation unit for every program: one compiler run (≈ 0.6 s here) instead of
            # one per source file (≈ 3 s for five) — an agent restart is that much shorter.
            sources = [*dict.fromkeys(point.source for point in (*features.attach_points(), *features.tracepoints()))]
            seen: set[Path] = set()
            text = "".join(translation_unit(BPF_DIR / source, seen) for source in sources)
            try:
                with COMPILE_LOCK:
                    module = BPF(text=text.encode(), cflags=features.cflags(pin_dir))
            except Exception as exc:  # bcc raises bare Exception for compile errors
                raise LoaderError(f"{', '.join(sources)}: {exc}") from exc
            lb._modules.append(module)
            for ap in features.attach_points():
                try:
                    function = module.load_func(ap.function.encode(), ap.prog_type, attach_type=ap.attach_type)
                except Exception as exc:  # bcc raises bare Exception for verifier errors
                    raise LoaderError(f"{ap.source}: {exc}") from exc
                lb.programs[ap.name] = function.fd
            for tp in features.tracepoints():
                try:
                    function = module.load_func(tp.function.encode(), BPF_PROG_TYPE_RAW_TRACEPOINT)
                except Exception as exc:  # bcc raises bare Exception
                    raise LoaderError(f"{tp.source}: {exc}") from exc
                lb.trace_programs[tp.tracepoint] = function.fd
            lb._open_maps(specs)
        except BaseException:
            lb.close()
            raise
        return lb

    @classmethod
    def open(cls, pin_dir: Path, features: Features = Features()) -> SocketLB:
        lb = cls(Path(pin_dir), features)
        try:
            lb._open_maps(features.map_specs())
        except MapError as exc:
            lb.close()
            raise LoaderError(f"socket-LB maps are not pinned under {pin_dir}: {exc}") from exc
        return lb

    def _open_maps(self, specs: dict[str, maps.MapSpec]) -> None:
        for name, spec in specs.items():
            self.maps[name] = MapHandle.open(spec, self.pin_dir)

    def attach(self, cgroup: Path, allow_root: bool = False) -> None:
        """Attach the loaded programs to ``cgroup`` (multi-attach), then detach any older copy of
        ours there (a previous agent's, or an attach point now switched off), so there is never a
        moment without a program; pin them so the next agent finds them. Idempotent."""
        cgroup = check_cgroup(Path(cgroup), allow_root)
        if not self.programs:
            raise LoaderError("nothing loaded: use SocketLB.load")
        fd = _open_dir(cgroup)
        attached: list[AttachPoint] = []
        try:
            for name, prog_fd in self.programs.items():
                ap = ATTACH_POINTS[name]
                rc = libbpf().bpf_prog_attach(prog_fd, fd, ap.attach_type, BPF_F_ALLOW_MULTI)
                if rc < 0 and _err(rc) == errno.EEXIST:
                    continue   # this very program is attached already
                if rc < 0:
                    raise LoaderError(f"attach {ap.function} to {cgroup}: {os.strerror(_err(rc))}")
                attached.append(ap)
        except LoaderError:
            for ap in attached:
                libbpf().bpf_prog_detach2(self.programs[ap.name], fd, ap.attach_type)
            raise
        finally:
            os.close(fd)
        detach(cgroup, keep={name: prog_info(pfd).id for name, pfd in self.programs.items()})
        for ap in _ALL_ATTACH_POINTS:
            pin = self.pin_dir / f"{PROG_PIN_PREFIX}{ap.name}"
            pin.unlink(missing_ok=True)
            if ap.name in self.programs:
                rc = libbpf().bpf_obj_pin(self.programs[ap.name], str(pin).encode())
                if rc < 0:
                    raise LoaderError(f"pin {pin}: {os.strerror(_err(rc))}")
        self._attach_tracepoints()

    def _attach_tracepoints(self) -> None:
        """Replace a previous agent's tracepoint links with ours. The old link goes first (its
        pin was its last reference), so a failure is never counted twice; one in the gap of a
        few microseconds is missed."""
        for tp in TRACEPOINTS:
            pin = self.pin_dir / f"{LINK_PIN_PREFIX}{tp}"
            pin.unlink(missing_ok=True)
            if tp not in self.trace_programs:
                continue
            fd = libbpf().bpf_raw_tracepoint_open(tp.encode(), self.trace_programs[tp])
            if fd < 0:
                raise LoaderError(f"attach {TRACEPOINTS[tp].function} to tracepoint {tp}: {os.strerror(_err(fd))}")
            self._links.append(fd)
            rc = libbpf().bpf_obj_pin(fd, str(pin).encode())
            if rc < 0:
                raise LoaderError(f"pin {pin}: {os.strerror(_err(rc))}")

    def close(self) -> None:
        """Release this process's handles; attachments and pins stay."""
        for handle in self.maps.values():
            handle.close()
        self.maps.clear()
        for fd in self._links:
            os.close(fd)   # the pins keep the links attached
        self._links.clear()
        for module in self._modules:
            module.cleanup()
        self._modules.clear()
        self.programs.clear()
        self.trace_programs.clear()


def probe() -> tuple[bool, str]:
    """Can this host run the socket LB? Loads (never attaches) a minimal connect4 program."""
    if os.geteuid() != 0:
        return False, "needs root (CAP_BPF and CAP_NET_ADMIN)"
    if not _mounts("bpf"):
        return False, "bpffs is not mounted (mount -t bpf bpf /sys/fs/bpf)"
    if not _mounts("cgroup2"):
        return False, "no cgroup v2 hierarchy is mounted"
    try:
        from bcc import BPF  # noqa: PLC0415
    except ImportError as exc:
        return False, f"bcc is not importable ({exc}); install python3-bpfcc"
    try:
        with COMPILE_LOCK:
            module = BPF(text=(BPF_DIR / "probe_connect4.c").read_bytes())
        module.load_func(b"nv_probe", BPF_PROG_TYPE_CGROUP_SOCK_ADDR, attach_type=ATTACH_POINTS["connect4"].attach_type)
        module.cleanup()
    except Exception as exc:  # bcc raises bare Exception
        return False, f"cannot load a cgroup connect4 program: {exc}"
    return True, "cgroup sock_addr programs load"
