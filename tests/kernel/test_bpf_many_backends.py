"""A VIP with 40 backends through the eBPF socket LB: its Maglev table (4001 slots) spans more than
one ``nv_maglev`` chunk (2016 slots each), and real TCP connections from the test's cgroup reach
every backend with Maglev's even spread — a kernel that read only the first chunk, or read past it
wrongly, would leave backends out or pile connections on a few.

Same setup as test_bpf_socket_lb.py: programs on the test's own cgroup, backends listening inside
the test namespace, the VIP never routed.
"""

from __future__ import annotations

from collections import Counter

import pytest

from minuteman.dataplane import Backend, VipEntry, VipKey
from minuteman.ebpf import EbpfDataplane
from minuteman.maglev import maglev_table
from tests.kernel.test_bpf_socket_lb import answered_by, client, pins, serving_backends  # noqa: F401 — pins is a fixture

VIP = VipKey("11.0.0.40", 80, "tcp")
BACKENDS = tuple(Backend(f"10.78.0.{n}", 8080) for n in range(1, 41))
CONNECTIONS = 4000                      # 100 a backend on average


@pytest.fixture
def lab40(netns):
    """40 TCP backends on :8080, one address each on the namespace's loopback, named b1…b40."""
    specs = [f"tcp:{b.ip}:{b.port}:b{n}" for n, b in enumerate(BACKENDS, start=1)]
    yield from serving_backends(netns, [b.ip for b in BACKENDS], specs)


@pytest.fixture
def dataplane(lab40, pins):  # noqa: F811 — pins is the imported fixture
    dp = EbpfDataplane(lab40.cgroup.unified_path, pins)
    yield dp
    dp.close()


def test_forty_backends_span_table_chunks_and_all_take_connections(dataplane, lab40):
    table = maglev_table(BACKENDS)
    chunk_slots = dataplane.features.chunk_slots
    assert len(table) > chunk_slots, "the table must span more than one chunk"
    result = dataplane.apply({VIP: VipEntry(VIP, BACKENDS, lookup=table)})
    assert result.programmed == {VIP} and not result.errors
    assert dataplane.current()[VIP].lookup == table        # read back whole across the chunks

    replies = client(lab40, "tcp", VIP, CONNECTIONS, 10.0)
    counts = answered_by(replies)
    assert {r["peer"] for r in replies} == {"11.0.0.40:80"}
    assert set(counts) == {f"b{n}" for n in range(1, 41)}, f"backends never reached: {counts}"
    # Maglev gives every backend ⌊M/N⌋ or ⌈M/N⌉ slots; connections land by a flow hash, so each
    # backend's share is binomial around 100 (sd ≈ 10). Far outside that is unfair, not chance.
    slots = Counter(table)
    assert max(slots.values()) - min(slots.values()) <= 1
    mean = CONNECTIONS / len(BACKENDS)
    assert min(counts.values()) > 0.5 * mean and max(counts.values()) < 1.6 * mean, counts
    # Every connection was counted once, against the backend that answered it.
    per_backend = {b.ip: n for (vip, b), n in dataplane.connection_counts().items() if vip == VIP}
    assert per_backend == {BACKENDS[int(name[1:]) - 1].ip: n for name, n in counts.items()}
