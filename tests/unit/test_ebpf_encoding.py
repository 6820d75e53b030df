"""minuteman.ebpf's map encoding without a kernel: Maglev tables as nv_maglev chunks (the byte-wide
fast path must give exactly the bytes of the u16 path, and the same errors) and counter ids
handed out several at a time exactly as one at a time."""

from __future__ import annotations

import array
import random

import pytest

from minuteman.ebpf import _chunks, _Ids, table_chunks


def u16_chunks(lookup: tuple[int, ...], count: int, per_chunk: int) -> tuple[list[bytes], int]:
    """The reference: every slot converted on its own."""
    slots = array.array("H", lookup or range(count))
    return (_chunks(slots.tobytes(), per_chunk) if slots else []), len(slots)


@pytest.mark.parametrize("per_chunk", [2016, 100, 7])
def test_byte_wide_tables_encode_exactly_as_u16_tables(per_chunk):
    rng = random.Random(per_chunk)
    for count in (1, 2, 3, 10, 20, 255, 256):
        for size in (1, 53, 97, 100, 101, 1021, 2011, 4100):
            lookup = tuple(rng.randrange(count) for _ in range(size))
            assert table_chunks(lookup, count, per_chunk) == u16_chunks(lookup, count, per_chunk)
        # no lookup (P2C): one slot per backend
        assert table_chunks((), count, per_chunk) == u16_chunks((), count, per_chunk)
    assert table_chunks((), 0, per_chunk) == ([], 0)


def test_every_chunk_is_full_and_the_tail_repeats_the_table_from_its_start():
    chunks, size = table_chunks((0, 1, 2), 3, 4)
    assert size == 3 and chunks == [array.array("H", [0, 1, 2, 0]).tobytes()]
    chunks, size = table_chunks(tuple(range(5)), 300, 4)    # more than 256 backends: u16 path
    assert chunks == [array.array("H", [0, 1, 2, 3]).tobytes(), array.array("H", [4, 0, 1, 2]).tobytes()]


@pytest.mark.parametrize("lookup, count, message", [
    ((0, 7), 3, "lookup index 7 is outside the 3 backends"),
    ((0, 300), 3, "lookup index 300 is outside the 3 backends"),
    ((0, 256), 256, "lookup index 256 is outside the 256 backends"),
    ((0, -1), 3, "lookup holds an index outside the 3 backends"),
    ((0, 70000), 3, "lookup holds an index outside the 3 backends"),
    ((0, "1"), 3, "lookup holds an index outside the 3 backends"),
    ((0,), 0, "lookup index 0 is outside the 0 backends"),
    ((0, 400), 300, "lookup index 400 is outside the 300 backends"),
])
def test_bad_lookups_are_refused_naming_the_index(lookup, count, message):
    with pytest.raises(ValueError, match=message):
        table_chunks(lookup, count, 2016)


def test_many_ids_at_once_are_the_ids_one_at_a_time_would_be():
    rng = random.Random(7)
    for _round in range(200):
        limit = rng.randrange(5, 40)
        used = set(rng.sample(range(1, limit + 1), rng.randrange(0, limit // 2)))
        start = rng.randrange(0, limit + 2)
        one, many = _Ids(used, limit, "counter", start), _Ids(used, limit, "counter", start)
        for _take in range(3):
            count = rng.randrange(0, 6)
            if len(one.used) + count > limit:
                with pytest.raises(ValueError, match="no free counter id"):
                    many.take_many(count)
                assert many.used == one.used, "all or none"
                break
            assert many.take_many(count) == [one.take() for _ in range(count)]
            assert many.used == one.used and many.next_id == one.next_id


def test_backend_values_built_field_by_field_are_the_struct_packed_ones():
    import socket
    import struct

    from bpf import maps
    from minuteman.ebpf import _backend_values

    addresses = [socket.inet_aton(f"10.{n}.0.{n + 1}") for n in range(5)]
    ports = [1, 80, 8080, 65535, 256]
    counters = [7, 1, 262143, 2**32 - 1, 12]
    layout = struct.Struct("=4sHBBI")
    for active in (None, 0, 3, 5):
        expected = b"".join(
            layout.pack(a, socket.htons(p), maps.BACKEND_DRAINING if active is not None and n >= active else 0, 0, c)
            for n, (a, p, c) in enumerate(zip(addresses, ports, counters, strict=True)))
        assert _backend_values(addresses, ports, counters, active) == expected
    assert _backend_values([], [], []) == b""
