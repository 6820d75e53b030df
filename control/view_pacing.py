"""When the agents long-polling the cluster view are woken (``Master.wait_view``).

```
view change ──► ViewWakeups.changed ──► no change for a window, or ──yes──► wake now (once the last
                                        a window since the last wake-up?    fan-out is answered)
                                               │ no
                                               ▼
                                  one timer at last wake-up + window ──► wake (the changes meanwhile ride
                                               ▲                          along; the window doubles)
woken long-poll answered ──► served ──► fan-out time = from the wake-up to its last answer
                                         ──► window ≥ time ÷ share
```

- A change after a quiet spell reaches the agents at once; the changes that follow it (a task's
  launch and ``TASK_RUNNING`` tens of ms after its app's POST) wait at most ``min_window``.
- Changes that keep coming (a burst's thousand statuses) double the window at each wake-up that
  had to wait, up to ``max_window``: a burst reaches the agents as a few views, not one per change.
  A change after a quiet spell (none for a window) goes out at once and starts again from
  ``min_window``.
- A wake-up never starts while the long-polls the last one woke are still being answered (with
  1,000 agents on a loaded machine that takes longer than its CPU): the two would share the
  loop and both reach their last agent late. (At most ``fanout_timeout`` after a wake-up the
  next one goes ahead anyway: a woken long-poll whose handler was cancelled never answers.)
- Handing a view out takes the master's loop a while per agent (1,000 agents: 0.3–0.5 s on two
  shared cores). The window is never shorter than the last fan-out's time ÷ ``fanout_share``, so
  views take at most that share of the loop however many agents follow — and at that scale the
  changes a fan-out held back (a task's launch and ``TASK_RUNNING`` behind its app's VIP) fold
  into one view.

Pure: the clock and the timer are injected (``schedule(delay, callback)`` returns a handle with
``cancel()``, or None when there is no event loop — then every change wakes at once).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

MIN_WINDOW_SECONDS = 0.1
MAX_WINDOW_SECONDS = 1.0
FANOUT_TIMEOUT_SECONDS = 2.0
# At most this share of the master's loop goes to handing views out.
FANOUT_SHARE = 0.5


class Cancellable(Protocol):
    def cancel(self) -> None: ...


Schedule = Callable[[float, Callable[[], None]], Cancellable | None]


def loop_call_later(delay: float, callback: Callable[[], None]) -> Cancellable | None:
    """The running event loop's ``call_later``; None outside a loop."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    return loop.call_later(delay, callback)


class ViewWakeups:
    def __init__(self, wake: Callable[[], int | None], clock: Callable[[], float] = time.monotonic,
                 schedule: Schedule = loop_call_later, min_window: float = MIN_WINDOW_SECONDS,
                 max_window: float = MAX_WINDOW_SECONDS, fanout_share: float = FANOUT_SHARE,
                 fanout_timeout: float = FANOUT_TIMEOUT_SECONDS) -> None:
        """``wake()`` hands the current view to every waiting long-poll and says how many it woke
        (each then calls ``served(woken=True)``)."""
        self._wake = wake
        self._clock = clock
        self._schedule = schedule
        self.min_window = min_window
        self.max_window = max_window
        self.fanout_share = fanout_share
        self.fanout_timeout = fanout_timeout
        self.churn_window = min_window
        self.woken_at = float("-inf")
        self.last_served_at = float("-inf")
        self.last_change_at = float("-inf")
        self._previous_cost = 0.0       # of the last fan-out that answered anyone
        self.wakeups = 0
        self._timer: Cancellable | None = None
        self._unanswered = 0            # long-polls the last wake-up woke that have no answer yet
        self._after_fanout = False      # a wake-up waits for them

    @property
    def pending(self) -> bool:
        """A wake-up is due (changes wait for it)."""
        return self._timer is not None or self._after_fanout

    @property
    def fanout_cost(self) -> float:
        """Seconds from the last wake-up until the last long-poll it woke was answered (so far);
        0 before the first wake-up (an answer then belongs to no fan-out)."""
        if self.wakeups == 0:
            return 0.0
        return max(0.0, self.last_served_at - self.woken_at)

    def window(self) -> float:
        """The least time between two wake-ups now. The cost is the dearer of the fan-out in
        progress (so far) and the last complete one: a timer may fire before the long-polls just
        woken have resumed, when nothing of this fan-out is measured yet."""
        return max(self.churn_window, max(self.fanout_cost, self._previous_cost) / self.fanout_share)

    def changed(self) -> None:
        """The view changed: wake now, or at the end of the window (one timer for any number of
        changes). Idempotent while a wake-up is due."""
        now = self._clock()
        quiet = now - self.last_change_at >= self.window()
        self.last_change_at = now
        if self.pending:
            return
        if quiet:
            # Nothing changed for a whole window: this is news, handed out at once (once the last
            # fan-out is answered). Changes spaced so still leave the loop the window's share.
            self.churn_window = self.min_window
            self._go(now)
        elif now - self.woken_at >= self.window():
            self._go(now)
        else:
            self._arm(self.woken_at + self.window() - now, self._due)

    def served(self, woken: bool = False) -> None:
        """A long-poll was answered with a newer view: part of the last wake-up's fan-out (its
        cost so far); ``woken``: one that wake-up woke."""
        self.last_served_at = self._clock()
        if woken and self._unanswered > 0:
            self._unanswered -= 1
            if self._unanswered == 0 and self._after_fanout:
                self.cancel()
                self._wake_now()

    def cancel(self) -> None:
        """Drops a due wake-up (the master is closing). Idempotent."""
        self._after_fanout = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self, delay: float, callback: Callable[[], None]) -> None:
        self._timer = self._schedule(delay, callback)
        if self._timer is None:         # no loop to wait on (a master used outside one)
            self._after_fanout = False
            self._wake_now()

    def _due(self) -> None:
        self._timer = None
        now = self._clock()
        left = self.woken_at + self.window() - now
        if left > 1e-6:
            # The fan-out in progress when the timer was set turned out dearer: wait for its share.
            self._arm(left, self._due)
            return
        # Changes kept coming within the window: a burst, fold more of it into each view.
        self.churn_window = min(self.max_window, self.churn_window * 2)
        self._go(now)

    def _go(self, now: float) -> None:
        """Wakes now, or once the last wake-up's long-polls are all answered (at most
        ``fanout_timeout`` after it)."""
        if self._unanswered > 0 and now < self.woken_at + self.fanout_timeout:
            self._after_fanout = True
            self._arm(self.woken_at + self.fanout_timeout - now, self._fanout_overdue)
        else:
            self._wake_now()

    def _fanout_overdue(self) -> None:
        self._timer = None
        self._after_fanout = False
        self._wake_now()

    def _wake_now(self) -> None:
        if self.fanout_cost > 0:
            self._previous_cost = self.fanout_cost
        self.woken_at = self._clock()
        self.wakeups += 1
        self._unanswered = self._wake() or 0
