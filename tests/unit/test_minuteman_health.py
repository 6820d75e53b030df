import asyncio
import socket

import pytest

from minuteman.dataplane import Backend
from minuteman.dataplane_fake import FakeDataplane
from minuteman.health import BackendHealth, HealthConfig

B1, B2 = Backend("10.0.0.1", 80), Backend("10.0.0.2", 80)


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_five_failures_in_a_row_take_a_backend_out_for_30s():
    clock = Clock()
    health = BackendHealth(HealthConfig(), clock)
    for _ in range(4):
        health.record(B1, False)
    assert not health.is_out(B1)
    health.record(B1, False)
    assert health.is_out(B1) and health.out() == {B1}
    clock.now += 29.9
    assert health.is_out(B1)
    clock.now += 0.2
    assert not health.is_out(B1)
    assert health.failed_total(B1) == 5


def test_a_success_resets_the_run():
    health = BackendHealth(HealthConfig(failures=3), Clock())
    for ok in (False, False, True, False, False):
        health.record(B1, ok)
    assert not health.is_out(B1)
    health.record(B1, False)
    assert health.is_out(B1)


def test_configurable_and_validated():
    with pytest.raises(ValueError, match="failures"):
        HealthConfig(failures=0)
    with pytest.raises(ValueError, match="reply_timeout"):
        HealthConfig(reply_timeout=0)
    clock = Clock()
    health = BackendHealth(HealthConfig(failures=1, quarantine=2), clock)
    health.record(B2, False)
    assert health.is_out(B2)
    clock.now += 2.1
    assert not health.is_out(B2)


class EventSource:
    def __init__(self, events):
        self.events = events

    def drain_outcomes(self):
        out, self.events = self.events, []
        return out


class CounterSource:
    def __init__(self):
        self.totals = {}

    def outcome_totals(self):
        return dict(self.totals)


def test_both_feeds():
    health = BackendHealth(HealthConfig(failures=2), Clock())
    health.poll(EventSource([(B1, False), (B1, False), (B2, True)]))
    assert health.out() == {B1}
    counters = CounterSource()
    counters.totals = {B2: (10, 1)}
    health.poll(counters)
    assert not health.is_out(B2)
    counters.totals = {B2: (10, 3)}     # two more failures, no success in between
    health.poll(counters)
    assert health.is_out(B2)
    health.poll(FakeDataplane())        # a dataplane with neither feed is fine
    health.forget([B2])
    assert health.out() == {B2}


async def test_active_probe_finds_refusing_and_listening_backends():
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    with socket.socket() as s:       # a port that refuses: bound, not listening
        s.bind(("127.0.0.1", 0))
        closed = Backend("127.0.0.1", s.getsockname()[1])
        health = BackendHealth(HealthConfig(failures=1), Clock())
        listening = Backend("127.0.0.1", port)
        await health.probe([listening, closed])
    server.close()
    assert health.out() == {closed}


def test_a_backend_back_at_the_same_address_is_not_judged_on_its_old_attempts():
    clock = Clock()
    health = BackendHealth(clock=clock)
    b = Backend("10.0.0.5", 31000)
    health.observe_totals({b: (49_000, 0)})
    health.observe_totals({b: (49_000, 6)})
    assert health.is_out(b)
    clock.now += 31                           # quarantine over
    health.forget(())                         # it left every VIP…
    health.observe_totals({b: (49_000, 6)})   # …and is back: the counters still hold its totals
    assert not health.is_out(b) and health.failed_total(b) == 0
    health.observe_totals({b: (49_010, 6)})
    assert health._records[b].succeeded == 10
    health.observe_totals({b: (49_010, 11)})
    assert health.is_out(b), "new failures still count"
