import random
from collections import Counter

import pytest

from minuteman.dataplane import Backend
from minuteman.maglev import flow_hash, is_prime, maglev_table, pick, table_size
from minuteman.p2c import OpenConnections, p2c_choose


def backends(n, base=0):
    return [Backend(f"10.0.{(i + base) // 250}.{(i + base) % 250 + 1}", 8080) for i in range(n)]


@pytest.mark.parametrize("n", [1, 3, 10, 100, 700])
def test_table_size_is_a_prime_well_above_100_per_backend(n):
    size = table_size(n)
    assert is_prime(size) and size > 100 * n and size >= 1021


@pytest.mark.parametrize("n", [2, 3, 7, 10, 64])
def test_every_backend_owns_an_even_share(n):
    table = maglev_table(backends(n))
    shares = Counter(table)
    assert set(shares) == set(range(n))
    # Maglev's round-robin fill: shares differ by at most one slot.
    assert max(shares.values()) - min(shares.values()) <= 1


def test_removing_a_backend_moves_few_other_slots():
    before = backends(10)
    after = before[:4] + before[5:]          # backend 4 goes away
    old, new = maglev_table(before), maglev_table(after)
    assert len(old) == len(new)
    moved = sum(1 for o, n in zip(old, new, strict=True) if o != 4 and before[o] != after[n])
    # Only backend 4's ~10 % of slots must move; Maglev moves a few percent more at most.
    assert moved / len(old) < 0.04
    assert {after[n] for n in new} == set(after)


def test_adding_a_backend_takes_its_share_mostly_from_others_evenly():
    before = backends(9)
    after = before + backends(1, base=50)
    old, new = maglev_table(before), maglev_table(after)
    size = len(new)
    to_new = sum(1 for n in new if after[n] == after[-1])
    changed = sum(1 for o, n in zip(old, new, strict=True) if before[o] != after[n])
    assert abs(to_new - size / 10) <= 1
    assert changed - to_new < 0.04 * size


def test_same_backends_give_the_same_table_object_and_flows_stick():
    a, b = maglev_table(backends(5)), maglev_table(list(backends(5)))
    assert a is b
    h = flow_hash(6, "10.1.1.1", 40000, "11.0.0.1", 80)
    assert pick(backends(5), a, h) == pick(backends(5), b, h)
    assert maglev_table([]) == () and pick([], (), h) is None


def test_flow_hash_spreads_flows_across_backends():
    bs = backends(4)
    table = maglev_table(bs)
    hits = Counter(pick(bs, table, flow_hash(6, "10.1.1.1", port, "11.0.0.1", 80)) for port in range(20000, 24000))
    assert all(800 <= hits[b] <= 1200 for b in bs), hits


def test_p2c_prefers_the_less_loaded_of_two_and_balances():
    bs = backends(5)
    load = OpenConnections()
    rng = random.Random(7)
    for _ in range(1000):
        chosen = p2c_choose(bs, load, rng)
        load.opened(chosen)
    counts = [load(b) for b in bs]
    assert max(counts) - min(counts) <= 2, counts
    # One backend already busy: it is never picked while two others are idle.
    load2 = OpenConnections()
    for _ in range(50):
        load2.opened(bs[0])
    picks = {p2c_choose(bs[:2], load2, rng) for _ in range(50)}
    assert picks == {bs[1]}


def test_p2c_edge_cases_and_closing():
    assert p2c_choose([], lambda b: 0) is None
    assert p2c_choose(backends(1), lambda b: 0) == backends(1)[0]
    load = OpenConnections()
    b = backends(1)[0]
    load.opened(b)
    load.closed(b)
    load.closed(b)
    assert load(b) == 0
