"""minuteman.ebpf.PairOutcomes: established connects of a pair from its connection and failure
counters, sampled at polls (the kernel reports failures only)."""

from __future__ import annotations

import pytest

from minuteman.ebpf import OUTCOME_WINDOW, PairOutcomes

W = OUTCOME_WINDOW


def test_connects_count_as_established_once_the_window_has_passed_without_failing():
    pair = PairOutcomes(now=0.0, connects=100, failed=1)   # followed from its first failure
    assert pair.update(0.0, 100, 1) == (0, 1)              # what came before is not counted
    assert pair.update(0.5, 110, 1) == (0, 1)              # made, not yet settled
    assert pair.update(0.5 + W, 110, 1) == (10, 1)
    assert pair.update(0.6 + W, 112, 3) == (10, 3)         # failures show at once ...
    assert pair.update(0.6 + 2 * W, 112, 3) == (10, 3)     # ... and are never counted established


def test_a_dead_backend_gets_no_successes_even_for_connects_still_in_flight():
    # A pair is first seen with connects in flight that later fail (blackholed backend: the
    # first SYN retransmission comes a second after the SYN).
    pair = PairOutcomes(now=0.0, connects=10, failed=1)
    for step in range(1, 8):
        now = step * 0.4
        connects = 10 + step
        failed = min(connects, 1 + step + 9 * (now >= 1.0))   # every connect fails, some late
        established, _failed = pair.update(now, connects, failed)
        assert established == 0


def test_never_decreases_and_works_with_sparse_polls():
    pair = PairOutcomes(now=0.0, connects=0, failed=0)
    assert pair.update(10.0, 50, 0) == (0, 0)      # the only sample is the first: nothing settled
    assert pair.update(20.0, 60, 5) == (45, 5)     # 50 made 10 s ago, 5 failed since
    assert pair.update(20.1, 60, 20) == (45, 20)   # late failures do not take successes back
    assert pair.update(30.0, 70, 20) == (45, 20)
    assert pair.update(40.0, 80, 20) == (50, 20)


def test_ids_come_back_only_after_all_the_others():
    from minuteman.ebpf import _Ids

    ids = _Ids({1, 2}, limit=5, what="counter")
    assert [ids.take(), ids.take()] == [3, 4], "after the highest in use (an adopted map)"
    again = _Ids({1, 2}, limit=5, what="counter", start=ids.next_id)     # 3 and 4 were freed since
    assert [again.take(), again.take(), again.take()] == [5, 3, 4]
    with pytest.raises(ValueError, match="no free counter id"):
        again.take()
