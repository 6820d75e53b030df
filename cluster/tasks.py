"""Task states as Mesos names them, and the groups the rest of the tree reasons with."""

from __future__ import annotations

from typing import Literal, get_args

TaskState = Literal[
    "TASK_STAGING", "TASK_STARTING", "TASK_RUNNING", "TASK_KILLING", "TASK_KILLED",
    "TASK_FINISHED", "TASK_FAILED", "TASK_LOST", "TASK_UNREACHABLE", "TASK_ERROR",
    "TASK_GONE", "TASK_DROPPED",
]
TASK_STATES: frozenset[str] = frozenset(get_args(TaskState))

# A task in one of these will never run again: its resources are free, its checks stop.
TERMINAL_STATES: frozenset[str] = frozenset({
    "TASK_FINISHED", "TASK_FAILED", "TASK_KILLED", "TASK_LOST", "TASK_ERROR", "TASK_GONE", "TASK_DROPPED",
})

# States whose task still answers connections: RUNNING serves, KILLING drains.
SERVING_STATES: frozenset[str] = frozenset({"TASK_RUNNING", "TASK_KILLING"})


def is_terminal(state: str) -> bool:
    return state in TERMINAL_STATES
