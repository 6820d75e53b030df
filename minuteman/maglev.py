"""Maglev consistent hashing (Eisenbud et al., NSDI 2016) and the flow hash that indexes it.

``maglev_table(backends)`` returns, for a prime table size M, the index of the backend that owns
each slot. Each backend fills slots in its own permutation (offset, skip from two hashes of its
address), round-robin, so every backend owns ⌊M/N⌋ or ⌈M/N⌉ slots, and removing a backend moves
only (about) its own slots. M is the smallest prime ≥ max(minimum, 100 × N): with M ≫ N the
shares are even to within 1 %, and the table stays small enough to keep one per VIP.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Sequence
from functools import lru_cache

from minuteman.dataplane import Backend

DEFAULT_MIN_TABLE_SIZE = 1021
SLOTS_PER_BACKEND = 100


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    f = 3
    while f * f <= n:
        if n % f == 0:
            return False
        f += 2
    return True


def table_size(backend_count: int, minimum: int = DEFAULT_MIN_TABLE_SIZE) -> int:
    """The smallest prime ≥ max(minimum, 100 × backends) (strictly above 100 × backends)."""
    n = max(minimum, SLOTS_PER_BACKEND * backend_count + 1)
    while not is_prime(n):
        n += 1
    return n


def _permutation(backend: Backend, size: int) -> tuple[int, int]:
    digest = hashlib.blake2b(f"{backend.ip}:{backend.port}".encode(), digest_size=16).digest()
    h1, h2 = struct.unpack("<QQ", digest)
    return h1 % size, h2 % (size - 1) + 1


def maglev_table(backends: Sequence[Backend], minimum: int = DEFAULT_MIN_TABLE_SIZE) -> tuple[int, ...]:
    """Slot → index into ``backends``; empty for no backends. Same input → same (shared) tuple."""
    return _cached_table(tuple(backends), minimum)


@lru_cache(maxsize=4096)
def _cached_table(backends: tuple[Backend, ...], minimum: int) -> tuple[int, ...]:
    n = len(backends)
    if n == 0:
        return ()
    size = table_size(n, minimum)
    perms = [_permutation(b, size) for b in backends]
    nexts = [0] * n
    table = [-1] * size
    filled = 0
    while True:
        for i, (offset, skip) in enumerate(perms):
            slot = (offset + nexts[i] * skip) % size
            while table[slot] >= 0:
                nexts[i] += 1
                slot = (offset + nexts[i] * skip) % size
            table[slot] = i
            nexts[i] += 1
            filled += 1
            if filled == size:
                return tuple(table)


def flow_hash(protocol: int, src: str, sport: int, dst: str, dport: int) -> int:
    """A stable 32-bit hash of the 5-tuple (the same flow always picks the same slot)."""
    return zlib.crc32(f"{protocol}|{src}|{sport}|{dst}|{dport}".encode())


def pick(backends: Sequence[Backend], lookup: Sequence[int], hash_value: int) -> Backend | None:
    if not backends or not lookup:
        return None
    return backends[lookup[hash_value % len(lookup)]]
