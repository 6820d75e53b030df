"""The Python mirror of every socket-LB map layout in ``bpf/lib/layout.h``.

One ctypes structure per C struct, with the same field names, so the layout test can turn each
field into a ``_Static_assert`` on ``offsetof``/``sizeof`` and compile it against the header.
Addresses and ports are stored exactly as the kernel hands them to the programs (network byte
order), so ``be32``/``be16`` convert at this boundary and nowhere else.
"""

from __future__ import annotations

import ctypes
import functools
import ipaddress
import socket
import struct
from dataclasses import dataclass

# Defaults of the -D constants in layout.h; the loader passes the values it uses.
DEFAULT_CHUNK_SLOTS = 2016
DRAINING_INDEX = 0x10000
DEFAULT_MAX_CHUNKS = 131072
DEFAULT_MAX_SERVICES = 65536
DEFAULT_MAX_BACKENDS = 262144
DEFAULT_PEER_SLOTS = 1 << 20
DEFAULT_MAX_REVNAT = 65536

BACKEND_DRAINING = 0x1
SERVICE_IMPLICIT_TABLE = 0x1

PROTOCOLS = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}
PROTOCOL_NAMES = {number: name for name, number in PROTOCOLS.items()}


class Lb4Key(ctypes.Structure):
    C_NAME = "lb4_key"
    _fields_ = [
        ("address", ctypes.c_uint32),
        ("port", ctypes.c_uint16),
        ("protocol", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
    ]


class Lb4Service(ctypes.Structure):
    C_NAME = "lb4_service"
    _fields_ = [
        ("id", ctypes.c_uint32),
        ("table_size", ctypes.c_uint32),
        ("backend_count", ctypes.c_uint16),
        ("flags", ctypes.c_uint16),
    ]


class Lb4BackendKey(ctypes.Structure):
    C_NAME = "lb4_backend_key"
    _fields_ = [
        ("service_id", ctypes.c_uint32),
        ("index", ctypes.c_uint32),
    ]


class Lb4Backend(ctypes.Structure):
    C_NAME = "lb4_backend"
    _fields_ = [
        ("address", ctypes.c_uint32),
        ("port", ctypes.c_uint16),
        ("flags", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
        ("counter_id", ctypes.c_uint32),
    ]


class Lb4MaglevKey(ctypes.Structure):
    C_NAME = "lb4_maglev_key"
    _fields_ = [
        ("service_id", ctypes.c_uint32),
        ("chunk", ctypes.c_uint32),
    ]


class Lb4Peer(ctypes.Structure):
    C_NAME = "lb4_peer"
    _fields_ = [
        ("cookie", ctypes.c_uint64),
        ("vip_address", ctypes.c_uint32),
        ("backend_address", ctypes.c_uint32),
        ("vip_port", ctypes.c_uint16),
        ("backend_port", ctypes.c_uint16),
        ("counter_id", ctypes.c_uint32),
    ]


class Lb4Outcomes(ctypes.Structure):
    C_NAME = "lb4_outcomes"
    _fields_ = [
        ("refused", ctypes.c_uint64),
        ("unanswered", ctypes.c_uint64),
    ]


class Lb4RevnatKey(ctypes.Structure):
    C_NAME = "lb4_revnat_key"
    _fields_ = [
        ("cookie", ctypes.c_uint64),
        ("address", ctypes.c_uint32),
        ("port", ctypes.c_uint16),
        ("pad", ctypes.c_uint16),
    ]


class Lb4Revnat(ctypes.Structure):
    C_NAME = "lb4_revnat"
    _fields_ = [
        ("address", ctypes.c_uint32),
        ("port", ctypes.c_uint16),
        ("pad", ctypes.c_uint16),
    ]


@functools.cache
def maglev_type(slots: int = DEFAULT_CHUNK_SLOTS) -> type[ctypes.Structure]:
    """``struct lb4_maglev`` as compiled with ``-DNAVSTAR_LB_CHUNK_SLOTS=slots``."""
    return type(f"Lb4Maglev{slots}", (ctypes.Structure,), {
        "C_NAME": "lb4_maglev",
        "_fields_": [("backend_index", ctypes.c_uint16 * slots)],
    })


Lb4Maglev = maglev_type()
CounterId = ctypes.c_uint32
ConnectionCount = ctypes.c_uint64

# Every struct the header defines, for the layout test.
STRUCTS: tuple[type[ctypes.Structure], ...] = (
    Lb4Key, Lb4Service, Lb4BackendKey, Lb4Backend, Lb4MaglevKey, Lb4Maglev, Lb4Peer, Lb4Outcomes, Lb4RevnatKey, Lb4Revnat)


@dataclass(frozen=True)
class MapSpec:
    """One pinned map: its name in C (and under the pin directory) and its layout."""

    name: str
    map_type: int          # BPF_MAP_TYPE_*
    key: type
    value: type
    max_entries: int
    flags: int = 0

    @property
    def percpu(self) -> bool:
        return self.map_type in (BPF_MAP_TYPE_PERCPU_HASH, BPF_MAP_TYPE_PERCPU_ARRAY)


# uapi enum bpf_map_type and map flags used by maps.h
BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_PERCPU_HASH = 5
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_LRU_HASH = 9
BPF_F_NO_PREALLOC = 1


def map_specs(chunk_slots: int = DEFAULT_CHUNK_SLOTS, max_services: int = DEFAULT_MAX_SERVICES,
              max_backends: int = DEFAULT_MAX_BACKENDS, max_chunks: int = DEFAULT_MAX_CHUNKS,
              peer_slots: int = DEFAULT_PEER_SLOTS, max_revnat: int = DEFAULT_MAX_REVNAT) -> dict[str, MapSpec]:
    """The maps of ``bpf/lib/maps.h`` for one set of -D sizes, by C name."""
    specs = (
        MapSpec("nv_services", BPF_MAP_TYPE_HASH, Lb4Key, Lb4Service, max_services),
        MapSpec("nv_backends", BPF_MAP_TYPE_HASH, Lb4BackendKey, Lb4Backend, max_backends),
        MapSpec("nv_maglev", BPF_MAP_TYPE_HASH, Lb4MaglevKey, maglev_type(chunk_slots), max_chunks,
                BPF_F_NO_PREALLOC),
        MapSpec("nv_conns", BPF_MAP_TYPE_PERCPU_ARRAY, CounterId, ConnectionCount, max_backends),
        MapSpec("nv_revnat", BPF_MAP_TYPE_LRU_HASH, Lb4RevnatKey, Lb4Revnat, max_revnat),
        MapSpec("nv_outcomes", BPF_MAP_TYPE_HASH, CounterId, Lb4Outcomes, max_backends, BPF_F_NO_PREALLOC),
        MapSpec("nv_peers", BPF_MAP_TYPE_ARRAY, ctypes.c_uint32, Lb4Peer, peer_slots),
    )
    return {spec.name: spec for spec in specs}


# -- byte order at the boundary ----------------------------------------------------------
def be32(address: str) -> int:
    """A dotted IPv4 address as the u32 the kernel stores (network byte order in memory)."""
    return struct.unpack("=I", ipaddress.IPv4Address(address).packed)[0]


def from_be32(value: int) -> str:
    return str(ipaddress.IPv4Address(struct.pack("=I", value)))


def be16(port: int) -> int:
    return socket.htons(port)


def from_be16(value: int) -> int:
    return socket.ntohs(value)
