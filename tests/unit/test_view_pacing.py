"""How the master paces the view's long-polls (control/view_pacing.py, Master.wait_view): a fake
clock and a fake timer, nothing timed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from control.view_pacing import ViewWakeups
from tests.unit.master_harness import Cluster


class FakeTimers:
    """``schedule(delay, callback)`` on a fake clock; ``run_until(t)`` fires what is due."""

    def __init__(self) -> None:
        self.now = 0.0
        self.due: list[tuple[float, Callable[[], None], FakeTimers.Handle]] = []

    class Handle:
        def __init__(self) -> None:
            self.cancelled = False

        def cancel(self) -> None:
            self.cancelled = True

    def clock(self) -> float:
        return self.now

    def schedule(self, delay: float, callback: Callable[[], None]) -> FakeTimers.Handle:
        handle = FakeTimers.Handle()
        self.due.append((self.now + delay, callback, handle))
        return handle

    def run_until(self, until: float) -> None:
        while True:
            ready = sorted((t for t in self.due if t[0] <= until and not t[2].cancelled), key=lambda t: t[0])
            if not ready:
                break
            at, callback, handle = ready[0]
            self.due.remove((at, callback, handle))
            self.now = max(self.now, at)    # a timer fires late when the loop was busy
            callback()
        self.now = max(self.now, until)

    def busy_until(self, until: float) -> None:
        """The loop is busy (a fan-out): time passes, no timer fires."""
        self.now = until

    def pending_at(self) -> list[float]:
        return sorted(round(at, 6) for at, _, handle in self.due if not handle.cancelled)


def pacer(timers: FakeTimers, wakes: list[float], **kwargs) -> ViewWakeups:
    return ViewWakeups(lambda: wakes.append(round(timers.now, 6)), clock=timers.clock, schedule=timers.schedule,
                       **kwargs)


def test_a_change_after_quiet_wakes_at_once_and_its_followers_within_the_minimum_window():
    timers, wakes = FakeTimers(), []
    w = pacer(timers, wakes)
    timers.run_until(10.0)
    w.changed()                     # the app's POST: its VIP address
    assert wakes == [10.0] and not w.pending
    timers.run_until(10.03)
    w.changed()                     # its task launched
    timers.run_until(10.08)
    w.changed()                     # TASK_RUNNING: rides along with the launch
    assert w.pending and timers.pending_at() == [10.1]
    timers.run_until(11.0)
    assert wakes == [10.0, 10.1]


def test_answers_before_the_first_wakeup_belong_to_no_fanout():
    # An agent's first long-poll (since=0) is answered at once, before any wake-up: taking that as
    # a fan-out since the beginning of time made the window infinite (every later change waited for
    # the long-polls' own timeouts; found on the lab).
    timers, wakes = FakeTimers(), []
    w = pacer(timers, wakes)
    timers.run_until(5.0)
    w.served()
    w.changed()
    timers.run_until(5.05)
    w.changed()
    timers.run_until(6.0)
    assert wakes == [5.0, 5.1] and w.fanout_cost < 1


def test_a_burst_doubles_the_window_up_to_the_maximum_and_quiet_resets_it():
    timers, wakes = FakeTimers(), []
    w = pacer(timers, wakes, min_window=0.1, max_window=1.0)
    t = 5.0
    while t < 9.0:                  # a change every 10 ms for 4 s
        timers.run_until(t)
        w.changed()
        t += 0.01
    timers.run_until(12.0)
    gaps = [round(b - a, 3) for a, b in zip(wakes[:-1], wakes[1:], strict=True)]
    assert gaps[:5] == [0.1, 0.2, 0.4, 0.8, 1.0]
    assert set(gaps[5:]) == {1.0}
    assert wakes[-1] <= 9.0 + 1.0                     # the burst's last change is handed out too
    # Quiet for longer than the window: the next change is handed out at once, the window is short again.
    timers.run_until(20.0)
    w.changed()
    timers.run_until(20.05)
    w.changed()
    timers.run_until(21.0)
    assert wakes[-2:] == [20.0, 20.1]


def test_the_window_is_never_shorter_than_the_last_fanout_allows():
    timers, wakes = FakeTimers(), []
    w = pacer(timers, wakes, min_window=0.1, fanout_share=0.5)
    timers.run_until(1.0)
    w.changed()                     # wakes 1,000 long-polls; the last one answered 0.3 s later
    timers.run_until(1.3)
    w.served()
    assert w.fanout_cost == pytest.approx(0.3) and w.window() == pytest.approx(0.6)
    timers.run_until(1.35)
    w.changed()
    assert timers.pending_at() == [1.6]
    timers.run_until(2.0)
    assert wakes == [1.0, 1.6]
    # Past the window after a dear fan-out, a change goes out at once.
    timers.run_until(2.9)
    w.served()                      # the fan-out at 1.6 took 1.3 s: at most half the loop means 2.6 s
    timers.run_until(3.0)
    w.changed()
    assert wakes == [1.0, 1.6] and timers.pending_at() == [pytest.approx(4.2)]


def test_news_after_a_quiet_spell_goes_out_at_once_even_soon_after_a_wakeup():
    timers, wakes = FakeTimers(), []
    w = pacer(timers, wakes, min_window=0.1, fanout_share=0.5)
    timers.run_until(1.0)
    w.changed()                     # an app's VIP, to 1,000 agents
    timers.busy_until(1.3)
    w.served()
    timers.run_until(1.35)
    w.changed()                     # its task, held back by that fan-out: folded until 1.6
    timers.run_until(1.9)
    w.served()
    assert wakes == [1.0, 1.6]
    timers.run_until(2.0)           # the next app: nothing changed for 0.65 s (> the 0.6 s window)
    w.changed()
    assert wakes == [1.0, 1.6, 2.0]


def test_a_fanout_that_turns_out_dearer_than_when_the_timer_was_set_postpones_it():
    timers, wakes = FakeTimers(), []
    w = pacer(timers, wakes, min_window=0.1, fanout_share=0.5)
    timers.run_until(1.0)
    w.changed()
    timers.run_until(1.01)
    w.changed()                     # during the fan-out: its cost is not known yet
    assert timers.pending_at() == [1.1]
    timers.busy_until(1.09)
    w.served()                      # the fan-out ran until 1.25 s, past the timer's time…
    timers.busy_until(1.25)
    w.served()
    timers.run_until(1.3)
    assert wakes == [1.0]
    timers.run_until(2.0)
    assert wakes == [1.0, 1.5]      # …so the next one waits for 2 × 0.25 s


def test_a_timer_that_fires_before_the_woken_long_polls_resume_goes_by_the_last_fanout():
    timers, wakes = FakeTimers(), []
    w = pacer(timers, wakes, min_window=0.1, fanout_share=0.5)
    timers.run_until(1.0)
    w.changed()
    timers.busy_until(1.2)
    w.served()                      # a fan-out of 0.2 s
    timers.run_until(2.0)
    w.changed()                     # wakes at once; the loop is busy before any woken long-poll resumes
    timers.busy_until(2.01)
    w.changed()
    timers.busy_until(2.15)
    timers.run_until(2.2)           # the timer (2.1) fires: nothing of this fan-out measured yet
    assert wakes == [1.0, 2.0]
    timers.run_until(3.0)
    assert wakes == [1.0, 2.0, 2.4]


def test_a_wakeup_waits_until_the_long_polls_the_last_one_woke_are_answered():
    timers, wakes = FakeTimers(), []

    def wake() -> int:
        wakes.append(round(timers.now, 6))
        return 3                    # three long-polls woken

    w = ViewWakeups(wake, clock=timers.clock, schedule=timers.schedule, min_window=0.1, fanout_timeout=10.0,
                    fanout_share=100.0)
    timers.run_until(1.0)
    w.changed()
    w.served(woken=True)            # the first answer goes out at once, two wait for the machine
    timers.run_until(1.05)
    w.changed()
    timers.run_until(1.5)           # the window passed, the fan-out has not: the next one waits
    assert wakes == [1.0] and w.pending
    w.served(woken=True)
    w.served(woken=False)           # a long-poll back from the view before: not one of the three
    assert wakes == [1.0]
    timers.run_until(1.6)
    w.served(woken=True)            # the last of the three: the change goes out now
    assert wakes == [1.0, 1.6] and not w.pending
    # Woken long-polls that never answer (cancelled) hold the next wake-up at most fanout_timeout.
    timers.run_until(1.7)
    w.changed()
    timers.run_until(11.5)
    assert wakes == [1.0, 1.6]
    timers.run_until(11.7)
    assert wakes == [1.0, 1.6, 11.6]


def test_changes_while_a_wakeup_is_due_set_one_timer_and_cancel_drops_it():
    timers, wakes = FakeTimers(), []
    w = pacer(timers, wakes)
    timers.run_until(1.0)
    w.changed()
    for step in range(5):
        timers.run_until(1.0 + 0.01 * (step + 1))
        w.changed()
    assert len(timers.pending_at()) == 1
    w.cancel()
    w.cancel()
    timers.run_until(3.0)
    assert wakes == [1.0] and not w.pending


def test_without_an_event_loop_every_change_wakes_at_once():
    timers, wakes = FakeTimers(), []
    w = ViewWakeups(lambda: wakes.append(timers.now), clock=timers.clock, schedule=lambda _d, _c: None)
    timers.run_until(1.0)
    w.changed()
    timers.run_until(1.01)
    w.changed()
    assert wakes == [1.0, 1.01]


async def test_a_woken_long_poll_counts_towards_the_fanout_cost():
    c = Cluster()
    try:
        version = (await c.mesos.get("/v1/view")).json()["version"]
        waiting = asyncio.ensure_future(c.mesos.get("/v1/view", params={"since": version, "wait": 5}))
        for _ in range(5):
            await asyncio.sleep(0)
        wakeups = c.master.view_wakeups
        wakeups_before = wakeups.wakeups
        await c.register(1)
        view = (await asyncio.wait_for(waiting, 5)).json()
        assert view["version"] > version and wakeups.wakeups > wakeups_before
        assert wakeups.fanout_cost > 0      # the loop's CPU from the wake-up to the answer
    finally:
        await c.close()


async def test_a_long_poll_already_holding_the_newest_view_is_not_answered_again():
    # An agent answered after the change that set a wake-up already holds what the wake-up hands
    # out: answering it again would send a thousand agents the same version for nothing.
    c = Cluster()
    timers = FakeTimers()
    c.master.view_wakeups = ViewWakeups(c.master._wake_view_waiters, clock=timers.clock, schedule=timers.schedule)
    try:
        timers.run_until(10.0)
        c.master.view_changed()         # at once (nobody waits)
        timers.run_until(10.01)
        c.master.view_changed()         # within the window: a wake-up is due
        assert c.master.view_wakeups.pending
        version = c.master.view_version
        holding = asyncio.ensure_future(c.mesos.get("/v1/view", params={"since": version, "wait": 5}))
        behind = asyncio.ensure_future(c.mesos.get("/v1/view", params={"since": version - 1, "wait": 5}))
        for _ in range(20):
            await asyncio.sleep(0)
        assert not behind.done()        # waits for the wake-up, as the change is paced
        timers.run_until(10.2)
        assert (await asyncio.wait_for(behind, 5)).json()["version"] == version
        for _ in range(20):
            await asyncio.sleep(0)
        assert not holding.done()
        timers.run_until(12.0)
        c.master.view_changed()
        assert (await asyncio.wait_for(holding, 5)).json()["version"] == version + 1
    finally:
        await c.close()
