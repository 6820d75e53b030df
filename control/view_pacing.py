"""When the agents long-polling the cluster view are woken (``Master.wait_view``).

```
view change ──► ViewWakeups.changed ──► quiet for a window since the last wake-up? ──yes──► wake now
                                               │ no                                  (window back to the minimum)
                                               ▼
                                  one timer at last wake-up + window ──► wake (the changes meanwhile ride
                                               ▲                          along; the window doubles)
woken long-poll answered ──► served ──► fan-out cost = the loop's CPU from the wake-up to the last
                                         answer ──► window ≥ cost ÷ share
```

- A change after a quiet spell reaches the agents at once; the changes that follow it (a task's
  launch and ``TASK_RUNNING`` tens of ms after its app's POST) wait at most ``min_window``.
- Changes that keep coming (a burst's thousand statuses) double the window at each wake-up that
  had to wait, up to ``max_window``: a burst reaches the agents as a few views, not one per change.
- Handing a view out costs the master's loop CPU per agent (1,000 agents: about 0.3 s). The
  window is never shorter than the last fan-out's cost ÷ ``fanout_share``, so views take at most
  that share of the loop however many agents follow. The cost is the loop thread's CPU time, not
  the wall clock: agents that share the machine's cores slow the fan-out down without costing
  the master anything.

Pure: the clocks and the timer are injected (``schedule(delay, callback)`` returns a handle with
``cancel()``, or None when there is no event loop — then every change wakes at once).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

MIN_WINDOW_SECONDS = 0.1
MAX_WINDOW_SECONDS = 1.0
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
    def __init__(self, wake: Callable[[], None], clock: Callable[[], float] = time.monotonic,
                 schedule: Schedule = loop_call_later, min_window: float = MIN_WINDOW_SECONDS,
                 max_window: float = MAX_WINDOW_SECONDS, fanout_share: float = FANOUT_SHARE,
                 cpu_clock: Callable[[], float] = time.thread_time) -> None:
        """``wake()`` hands the current view to every waiting long-poll; ``cpu_clock`` is the CPU
        time of the thread that runs the loop (the fan-out's cost)."""
        self._wake = wake
        self._clock = clock
        self._cpu_clock = cpu_clock
        self._schedule = schedule
        self.min_window = min_window
        self.max_window = max_window
        self.fanout_share = fanout_share
        self.churn_window = min_window
        self.woken_at = float("-inf")
        self._woken_cpu = 0.0
        self._served_cpu = 0.0
        self._previous_cost = 0.0       # of the last fan-out that answered anyone
        self.wakeups = 0
        self._timer: Cancellable | None = None

    @property
    def pending(self) -> bool:
        """A wake-up is due (changes wait for it)."""
        return self._timer is not None

    @property
    def fanout_cost(self) -> float:
        """The loop's CPU seconds from the last wake-up until the last long-poll it woke was
        answered (so far)."""
        return max(0.0, self._served_cpu - self._woken_cpu)

    def window(self) -> float:
        """The least time between two wake-ups now. The cost is the dearer of the fan-out in
        progress (so far) and the last complete one: a timer may fire before the long-polls just
        woken have resumed, when nothing of this fan-out is measured yet."""
        return max(self.churn_window, max(self.fanout_cost, self._previous_cost) / self.fanout_share)

    def changed(self) -> None:
        """The view changed: wake now, or at the end of the window (one timer for any number of
        changes). Idempotent while a wake-up is due."""
        if self._timer is not None:
            return
        since = self._clock() - self.woken_at
        if since >= self.window():
            self.churn_window = self.min_window     # quiet for a window: the next change is news
            self._wake_now()
            return
        self._timer = self._schedule(self.window() - since, self._due)
        if self._timer is None:         # no loop to wait on (a master used outside one)
            self._wake_now()

    def served(self) -> None:
        """A long-poll woken by the last wake-up has its answer (the fan-out's cost so far)."""
        self._served_cpu = self._cpu_clock()

    def cancel(self) -> None:
        """Drops a due wake-up (the master is closing). Idempotent."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _due(self) -> None:
        self._timer = None
        left = self.woken_at + self.window() - self._clock()
        if left > 1e-6:
            # The fan-out in progress when the timer was set turned out dearer: wait for its share.
            self._timer = self._schedule(left, self._due)
            if self._timer is not None:
                return
        # Changes kept coming within the window: a burst, fold more of it into each view.
        self.churn_window = min(self.max_window, self.churn_window * 2)
        self._wake_now()

    def _wake_now(self) -> None:
        if self.fanout_cost > 0:
            self._previous_cost = self.fanout_cost
        self.woken_at = self._clock()
        self._woken_cpu = self._served_cpu = self._cpu_clock()
        self.wakeups += 1
        self._wake()
